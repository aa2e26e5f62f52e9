"""A user's ImageFolder at its own geometry: size/channels from the data, recipe by size."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.data.datasets import load_dataset
from lpld_cli.data.geometry import inspect_folder, recipe_for
from lpld_cli.errors import DataFormatError
from tests.conftest import FASHION_MNIST, needs_fmnist, run_lpld

runner = CliRunner()


def make_folder(root: Path, size: int | tuple[int, int], mode: str, per_class: int = 3,
                classes: tuple[str, ...] = ("cat", "dog"), seed: int = 0) -> Path:
    """train/ and val/ with `per_class` random images of one size and mode per class."""
    rng = np.random.default_rng(seed)
    w, h = (size, size) if isinstance(size, int) else size
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                shape = (h, w) if mode == "L" else (h, w, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                    folder / f"{k}.png")
    return root


@pytest.mark.parametrize(("size", "mode", "channels", "recipe"), [
    (28, "L", 1, "fashion-mnist"), (32, "RGB", 3, "fashion-mnist"),
    (64, "RGB", 3, "tiny-imagenet"), (48, "L", 1, "tiny-imagenet"),
    (96, "RGB", 3, "imagenet-1k")])
def test_geometry_is_read_from_the_images(tmp_path: Path, size: int, mode: str, channels: int,
                                          recipe: str) -> None:
    info = inspect_folder(make_folder(tmp_path, size, mode))
    assert (info.image_size, info.channels) == (size, channels)
    assert (info.train_images, info.val_images, info.classes) == (6, 6, ["cat", "dog"])
    assert recipe_for(info.image_size) == recipe and not info.resized


def test_mixed_sizes_and_modes_are_one_line_errors(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "a", 28, "L")
    Image.new("L", (32, 32)).save(root / "train" / "cat" / "odd.png")
    with pytest.raises(DataFormatError, match=r"differ in size \(28x28: 12, 32x32: 1; e\.g\. "
                                              r"train/cat/odd\.png\)"):
        inspect_folder(root)
    info = inspect_folder(root, image_size=30)  # an explicit size resizes every image
    assert info.image_size == 30 and info.resized
    data = load_dataset("imagefolder", str(root), {"image_size": 30, "channels": 1})
    assert tuple(data.train_images.shape) == (7, 1, 30, 30)
    rgb = make_folder(tmp_path / "b", 28, "L")
    Image.new("RGB", (28, 28)).save(rgb / "val" / "dog" / "colour.png")
    with pytest.raises(DataFormatError, match="mix grey and colour"):
        inspect_folder(rgb)
    assert inspect_folder(rgb, channels=3).channels == 3
    flat = make_folder(tmp_path / "c", (32, 24), "L")
    with pytest.raises(DataFormatError, match="are 32x24, not square"):
        inspect_folder(flat)


def test_cli_errors_and_recipe_on_stderr(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mixed", 28, "L")
    Image.new("L", (40, 40)).save(root / "train" / "dog" / "big.png")
    store = str(tmp_path / "store")
    result = runner.invoke(app, ["squeeze", "--dataset", "imagefolder", "--data", str(root),
                                 "--store", store])
    assert result.exit_code == 2
    assert result.output.splitlines()[0].startswith(f"Error: images in {root} differ in size")
    assert "Hint: pass --image-size N" in result.output and "Traceback" not in result.output
    wrong = runner.invoke(app, ["squeeze", "--image-size", "32", "--store", store])
    assert wrong.exit_code == 2 and "are for --dataset imagefolder" in wrong.output
    unknown = runner.invoke(app, ["squeeze", "--dataset", "imagefolder", "--data", str(root),
                                  "--image-size", "28", "--preset", "cifar", "--store", store])
    assert unknown.exit_code == 2 and "unknown dataset 'cifar'" in unknown.output


def test_in_memory_pixels_labels_and_normalisation(tmp_path: Path) -> None:
    root = make_folder(tmp_path, 20, "RGB", per_class=4)
    data = load_dataset("imagefolder", str(root))
    assert data.in_memory and data.class_names == ["cat", "dog"]
    assert data.train_labels.tolist() == [0] * 4 + [1] * 4
    first = np.asarray(Image.open(root / "train" / "cat" / "0.png"))
    np.testing.assert_array_equal(data.train_images[0].permute(1, 2, 0).numpy(), first)
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted(
        (root / "train").rglob("*.png"))]).astype(np.float64) / 255
    np.testing.assert_allclose(data.preset.mean, pixels.mean(axis=(0, 1, 2)), atol=1e-4)
    np.testing.assert_allclose(data.preset.std, pixels.std(axis=(0, 1, 2), ddof=1), atol=1e-4)
    assert data.preset.image_size == 20 and data.preset.teacher_model == "convnet"


def test_two_folders_never_share_a_teacher_id(tmp_path: Path) -> None:
    from lpld_cli.squeeze import SqueezeConfig, folder_config

    a = make_folder(tmp_path / "a", 28, "L", seed=0)
    b = make_folder(tmp_path / "b", 28, "L", seed=1)  # same names and sizes, other pixels
    base = SqueezeConfig(dataset="imagefolder")
    ca, cb = folder_config(base, str(a))[0], folder_config(base, str(b))[0]
    assert ca.data_sha256 != cb.data_sha256 and ca.identity() != cb.identity()
    assert "data_sha256" not in SqueezeConfig().identity()  # built-in ids unchanged


def fashion_folder(root: Path, per_train: int, per_val: int) -> Path:
    """Real grey 28-px PNGs from Fashion-MNIST's own IDX files, in train/ and val/."""
    from lpld_cli.data.datasets import read_idx

    names = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
             "bag", "boot"]
    for split, stem, per in (("train", "train", per_train), ("val", "t10k", per_val)):
        x = read_idx(FASHION_MNIST / f"{stem}-images-idx3-ubyte.gz")
        y = read_idx(FASHION_MNIST / f"{stem}-labels-idx1-ubyte.gz")
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k, i in enumerate(np.flatnonzero(y == c)[:per]):
                Image.fromarray(x[i], "L").save(folder / f"{k:04d}.png")
    return root


@pytest.mark.slow
@needs_fmnist
def test_small_real_grey_folder_end_to_end(tmp_path: Path) -> None:
    """The whole pipeline on 300 + 200 real grey PNGs no test has seen, through the CLI."""
    root = fashion_folder(tmp_path / "folder", per_train=30, per_val=20)
    store = tmp_path / "store"
    start = time.perf_counter()
    squeeze = run_lpld("squeeze", "--dataset", "imagefolder", "--data", str(root), "--json",
                       store=store, check=True)
    assert "28x28 grey; recipe fashion-mnist (chosen by image size)" in squeeze.stderr
    teacher = json.loads(squeeze.stdout)
    assert teacher["config"]["image_size"] == 28 and teacher["config"]["channels"] == 1
    run_lpld("recover", "--ipc", "10", store=store, check=True)
    run_lpld("relabel", "--ipc", "10", store=store, check=True)
    run_lpld("prune", "--ipc", "10", "--ratio", "40x", store=store, check=True)
    # train finds the folder's val/ split through the teacher (no --data again)
    student = json.loads(run_lpld("train", "--ipc", "10", "--ratio", "40x", "--json",
                                  store=store, check=True).stdout)
    seconds = time.perf_counter() - start
    m = student["metrics"]
    print(f"small folder: teacher top-1 {teacher['metrics']['top1']:.3f}, student top-1 "
          f"{m['top1']:.3f} on 200 val images, {seconds:.0f} s")
    assert student["config"]["dataset"] == "imagefolder"
    assert m["top1"] >= 0.4  # 10 classes: chance is 0.1


def test_preset_borrows_another_recipe(tmp_path: Path) -> None:
    """--preset NAME: a 28-px grey folder trained with Tiny-ImageNet's recipe (its ResNet-18
    teacher), said on stderr, recorded in the config, and a teacher of its own id."""
    from lpld_cli.data.presets import get_preset

    root = make_folder(tmp_path / "digits", 28, "L")
    base = ["squeeze", "--dataset", "imagefolder", "--data", str(root), "--teacher-epochs", "1",
            "--store", str(tmp_path / "store"), "--json"]
    tiny = get_preset("tiny-imagenet")
    borrowed = runner.invoke(app, [*base, "--preset", "tiny-imagenet"])
    assert borrowed.exit_code == 0, borrowed.output
    assert "28x28 grey; recipe tiny-imagenet (--preset)" in borrowed.stderr
    assert f"recipe: teacher {tiny.teacher_model} for {tiny.teacher_epochs} epochs" \
        in borrowed.stderr
    made = json.loads(borrowed.stdout)
    assert made["config"]["recipe"] == "tiny-imagenet"
    assert made["config"]["model"] == tiny.teacher_model == "resnet18"
    own = runner.invoke(app, base)
    assert own.exit_code == 0, own.output
    assert "recipe fashion-mnist (chosen by image size)" in own.stderr
    mine = json.loads(own.stdout)
    assert mine["config"]["recipe"] == "fashion-mnist" and mine["config"]["model"] == "convnet"
    assert mine["artifact"]["id"] != made["artifact"]["id"]


def test_folder_batches_do_not_depend_on_loader_workers_or_ranks(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """A folder too large for memory (96 px) is decoded by DataLoader workers; each
    sample's augmentation comes from its own seeded generator, so 0 or 2 workers, and
    two ranks' slices put together, give the very same augmented batches."""
    import torch

    import lpld_cli.data.datasets as datasets

    data = load_dataset("imagefolder", str(make_folder(tmp_path, 96, "RGB", per_class=5)))
    assert not data.in_memory

    def batches(workers: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
        monkeypatch.setattr(datasets, "loader_workers", lambda: workers)
        return [x for x, _ in data.batches("train", 4, torch.device("cpu"), augment=True,
                                           shuffle=True, seed=5, epoch=1, rank=rank,
                                           world=world, slices=world > 1)]

    alone = batches(0)
    assert [len(x) for x in alone] == [4, 4, 2] and alone[0].dtype == torch.float32
    plain = data.batches("train", 4, torch.device("cpu"), shuffle=True, seed=5, epoch=1)
    assert not torch.equal(alone[0], next(iter(plain))[0])  # the same images, augmented
    assert all(torch.equal(a, b) for a, b in zip(alone, batches(2), strict=True))
    halves = zip(batches(2, 0, 2), batches(0, 1, 2), strict=True)
    assert all(torch.equal(a, torch.cat(h)) for a, h in zip(alone, halves, strict=True))
    other_epoch = data.batches("train", 4, torch.device("cpu"), augment=True, shuffle=True,
                               seed=5, epoch=2)
    assert not torch.equal(alone[0], next(iter(other_epoch))[0])
