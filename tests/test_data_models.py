"""Datasets (IDX, ImageFolder, Tiny-ImageNet layouts) and the model factory."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lpld_cli.data.datasets import load_dataset, read_idx
from lpld_cli.errors import ConfigError, DataFormatError, DataNotFoundError
from lpld_cli.models.factory import build_model, check_input, load_weights, model_spec
from tests.conftest import needs_fmnist


def _write_idx(path: Path, array: np.ndarray) -> None:
    code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _fake_mnist(root: Path, n_train: int = 30, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz",
                   rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz",
                   (np.arange(n) % 10).astype(np.uint8))


def test_idx_roundtrip_and_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "tv" / "MNIST" / "raw"
    _fake_mnist(raw)
    images = read_idx(raw / "train-images-idx3-ubyte.gz")
    assert images.shape == (30, 28, 28) and images.dtype == np.uint8
    data = load_dataset("mnist", str(tmp_path / "tv"))  # <root>/MNIST/raw/ is found
    assert data.train_images.shape == (30, 1, 28, 28) and data.test_images.shape == (20, 1, 28, 28)
    assert torch.equal(data.train_labels, torch.arange(30) % 10)
    assert data.num_classes == 10
    x, y = next(data.batches("train", 8, torch.device("cpu"), augment=True, shuffle=True,
                             seed=0))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (8,)


def test_truncated_idx_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 100) + b"\x00" * 10)
    with pytest.raises(DataFormatError, match="truncated"):
        read_idx(path)


def test_missing_dataset_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LPLD_DATA", str(tmp_path))
    monkeypatch.setattr("lpld_cli.data.datasets.DEBIAN_FASHION_MNIST", tmp_path / "none")
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion-mnist")
    assert "apt-get install dataset-fashion-mnist" in err.value.hint
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("cifar-7")


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(path)


def test_imagefolder_and_tiny_imagenet_layouts(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            for k in range(3):
                _png(root / split / name / f"{k}.png", 40 * c + k)
    data = load_dataset("imagefolder", str(root))
    assert data.class_names == ["cat", "dog"] and data.num_train() == 6
    assert torch.equal(data.targets(), torch.tensor([0, 0, 0, 1, 1, 1]))
    x, y = next(data.batches("test", 4, torch.device("cpu")))
    # the folder's own geometry (issue 17), no longer ImageNet's 224 px
    assert x.shape == (4, 3, 40, 40) and y.tolist() == [0, 0, 0, 1]

    tiny = tmp_path / "tiny"
    for c, wnid in enumerate(("n01", "n02")):
        for k in range(2):
            _png(tiny / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", 50 * c)
    lines = []
    for k, wnid in enumerate(("n02", "n01", "n02")):
        _png(tiny / "val" / "images" / f"val_{k}.JPEG", 10 * k)
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t10\t10")
    (tiny / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (tiny / "words.txt").write_text("n01\tgoldfish\nn02\tsalamander\n")
    data = load_dataset("tiny-imagenet", str(tiny))
    assert data.class_names == ["goldfish", "salamander"] and data.num_train() == 4
    xs, ys = next(data.batches("test", 8, torch.device("cpu")))
    assert xs.shape == (3, 3, 64, 64) and ys.tolist() == [1, 0, 1]


@needs_fmnist
def test_fashion_mnist_real_files() -> None:
    data = load_dataset("fashion-mnist")
    assert data.num_train() == 60000 and len(data.test_images) == 10000
    assert data.class_names[9] == "Ankle boot"
    assert torch.equal(torch.bincount(data.train_labels), torch.full((10,), 6000))
    small = data.subset(500, seed=1)
    assert small.num_train() == 500 and torch.equal(
        small.train_images, data.subset(500, seed=1).train_images)
    images, labels = data.sample_train_images(3, seed=0)
    assert images.shape == (30, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(labels, torch.arange(10).repeat_interleave(3))


@pytest.mark.parametrize("arch", ["convnet", "resnet18", "mobilenet_v2", "efficientnet_b0",
                                  "timm:resnet10t"])
def test_models_take_small_inputs(arch: str) -> None:
    spec = model_spec(arch, num_classes=10, in_chans=1, image_size=28)
    model = build_model(spec)
    check_input(model, spec)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_model_errors_and_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        build_model(model_spec("vgg99", 10, 1, 28))
    with pytest.raises(ConfigError, match="too deep"):
        build_model(model_spec("convnet", 10, 1, 8, depth=4))
    spec = model_spec("convnet", 10, 1, 28, width=8)
    source = build_model(spec)
    safetensors_file = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(safetensors_file))
    torch_file = tmp_path / "w.pt"
    torch.save({"state_dict": source.state_dict()}, torch_file)
    for file in (safetensors_file, torch_file):
        target = build_model(spec)
        load_weights(target, file)
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(),
                                                     target.state_dict().values(), strict=True))
    with pytest.raises(ConfigError, match="does not match the model"):
        load_weights(build_model(model_spec("convnet", 10, 1, 28, width=16)), safetensors_file)
