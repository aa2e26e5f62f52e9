"""Real datasets (DESIGN §3): IDX files parsed directly, ImageFolder layouts, Tiny-ImageNet.

Nothing is ever downloaded. Every dataset yields normalised float batches through
one interface, `RealData`, whatever its storage: small IDX datasets live in memory
as uint8 tensors (batched augmentation, no per-sample Python), folder datasets are
decoded by DataLoader workers.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lpld_cli.data import fashion_pairs
from lpld_cli.data.augment import normalise
from lpld_cli.data.geometry import FolderInfo, image_files, inspect_folder, recipe_for
from lpld_cli.data.presets import DATASETS, Preset, get_preset
from lpld_cli.device import loader_workers
from lpld_cli.errors import ConfigError, DataFormatError, DataNotFoundError

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32,
               0x0D: np.float32, 0x0E: np.float64}


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped): magic, dims, then the raw array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataFormatError(f"{path} is not a readable IDX file ({exc})",
                              "expected the Fashion-MNIST/MNIST .gz files") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFormatError(f"{path} is not an IDX file (bad magic number)",
                              "expected the Fashion-MNIST/MNIST .gz files")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]).newbyteorder(">"), raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - header != count * dtype.itemsize:
        raise DataFormatError(f"{path} is a truncated IDX file ({len(raw) - header} bytes of "
                              f"data for shape {dims})", "reinstall the dataset")
    return np.frombuffer(raw, dtype=dtype, offset=header, count=count).reshape(dims).astype(
        dtype.newbyteorder("="))


def _find_idx_root(dataset: str, data: str | None) -> Path:
    """Locate the four IDX files: --data, $LPLD_DATA, Debian's folder, torchvision's layout."""
    if data is not None:
        candidates = [Path(data)]
        if not Path(data).exists():
            raise DataNotFoundError(f"data folder {data} does not exist",
                                    "pass --data with the folder holding the IDX .gz files")
    else:
        candidates = [Path(p) for p in [os.environ.get("LPLD_DATA")] if p]
        if dataset == "fashion-mnist":
            candidates.append(DEBIAN_FASHION_MNIST)
    tv_name = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}[dataset]
    for root in candidates:
        for folder in (root, root / tv_name / "raw"):
            if all(_idx_path(folder, name) for pair in _IDX_FILES.values() for name in pair):
                return folder
    where = ", ".join(str(c) for c in candidates) or "(no folder given)"
    hint = ("install Debian's package: apt-get install dataset-fashion-mnist, or pass --data"
            if dataset == "fashion-mnist" else "pass --data with the folder holding the IDX files")
    raise DataNotFoundError(f"{dataset} IDX files not found in {where}", hint)


def _idx_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


@dataclass
class RealData:
    """A real dataset's train and test splits, with its preset and class names."""

    name: str
    preset: Preset
    class_names: list[str]
    train: Dataset | None = None
    test: Dataset | None = None
    # In-memory IDX datasets: uint8 [N, C, H, W] images and int64 labels.
    train_images: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_memory(self) -> bool:
        return self.train_images is not None

    def num_train(self) -> int:
        return len(self.train_images) if self.in_memory else len(self.train)

    def targets(self) -> torch.Tensor:
        """The training labels, without decoding any image."""
        if self.in_memory:
            return self.train_labels
        return torch.as_tensor([t for _, t in self.train.samples])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] images to the preset's normalised space."""
        return normalise(x, self.preset.mean, self.preset.std)

    def batches(self, split: str, batch_size: int, device: torch.device, *,
                augment: bool = False, shuffle: bool = False, seed: int = 0, stream: str = "",
                epoch: int = 0, rank: int = 0, world: int = 1, slices: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised (images, labels) batches on `device`, from a fixed seeded plan.

        Batch b of (seed, stream, epoch) always holds the same images with the same
        augmentation, whoever computes it: the order is one seeded permutation and each
        augmentation is drawn from a generator keyed by (seed, stream, epoch, b) for
        in-memory data, by (seed, stream, epoch, sample) in folder datasets' loader
        workers. So the world size and the number of loader workers change nothing.
        Under N ranks this rank gets the batches b ≡ rank (mod N), or with `slices` its
        part of every batch (`tensor_split`, for DDP training).
        """
        plan = self.batch_plan(split, batch_size, shuffle, stream_seed(seed, stream, epoch))
        if not slices:
            plan = [(b, idx) for b, idx in enumerate(plan) if b % world == rank]
        else:  # a batch too small to give every rank a sample is skipped
            plan = [(b, idx) for b, idx in enumerate(plan) if len(idx) >= world]
        if self.in_memory:
            images = self.train_images if split == "train" else self.test_images
            labels = self.train_labels if split == "train" else self.test_labels
            for b, idx in plan:
                x = images[idx].to(device, non_blocking=True)
                if augment:
                    g = torch.Generator().manual_seed(stream_seed(seed, stream, epoch, b))
                    x = _pad_crop_flip(x, g)
                y = labels[idx]
                if slices:
                    x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
                yield self.normalize(x), y.to(device, non_blocking=True)
            return
        dataset = self.train if split == "train" else self.test
        if augment != (split == "train"):
            dataset = _folder_split(self, split, augment)
        if augment:
            dataset = _SeededSamples(dataset, stream_seed(seed, stream, epoch))
        batches = [idx.tensor_split(world)[rank] if slices else idx for _, idx in plan]
        loader = DataLoader(dataset, batch_sampler=[b.tolist() for b in batches],
                            num_workers=loader_workers(),
                            pin_memory=device.type == "cuda", persistent_workers=False)
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def batch_plan(self, split: str, batch_size: int, shuffle: bool, seed: int
                   ) -> list[torch.Tensor]:
        """The sample indices of every batch of one pass: fixed by `seed` alone."""
        n = (len(self.train_images if split == "train" else self.test_images) if self.in_memory
             else len(self.train if split == "train" else self.test))
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle
                 else torch.arange(n))
        return list(order.split(batch_size))

    def num_batches(self, split: str, batch_size: int) -> int:
        n = (len(self.train_images if split == "train" else self.test_images) if self.in_memory
             else len(self.train if split == "train" else self.test))
        return -(-n // batch_size)

    def subset(self, n: int, seed: int) -> RealData:
        """The same dataset with only `n` seeded random training images (quick runs, tests)."""
        if n > self.num_train():  # the id would record a subset that was never taken
            raise ConfigError(f"--train-subset {n} exceeds the {self.num_train()} training "
                              f"images of {self.name}",
                              f"pass at most {self.num_train()}, or leave it out for all")
        if n == self.num_train():
            return self
        keep = torch.randperm(self.num_train(), generator=torch.Generator().manual_seed(seed))[:n]
        if self.in_memory:
            return replace(self, train_images=self.train_images[keep],
                           train_labels=self.train_labels[keep])
        train = copy.copy(self.train)
        train.samples = [self.train.samples[int(i)] for i in keep]
        return replace(self, train=train)

    def sample_train_images(self, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A seeded random subset of `per_class` training images per class, uint8 [N, C, H, W]
        (never a float copy: 21K-P's real IPC10 is 6 GB as float32, 1.5 GB as uint8)."""
        generator = torch.Generator().manual_seed(seed)
        targets = self.targets()
        chosen = []
        for c in range(self.num_classes):
            idx = torch.nonzero(targets == c).flatten()
            if len(idx) < per_class:
                raise ConfigError(f"class {c} has only {len(idx)} training images, "
                                  f"fewer than {per_class}")
            chosen.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
        index = torch.cat(chosen)
        if self.in_memory:
            return self.train_images[index], targets[index]
        plain = _folder_split(self, "train", augment=False, normalize=False)
        # ToTensor gives k / 255 exactly: rounding recovers the file's uint8 pixels
        return torch.stack([(plain[int(i)][0] * 255).round().to(torch.uint8)
                            for i in index]), targets[index]


def stream_seed(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit generator seed for one named random stream (and batch): order-free."""
    text = ":".join(["lpld-data", str(seed), stream, *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class _SeededSamples(Dataset):
    """Seeds torch's RNG per sample, so random transforms do not depend on the workers."""

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base, self.seed = base, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed + 0x9E3779B97F4A7C15 * (i + 1)) % (1 << 63))
            return self.base[i]


def _pad_crop_flip(x: torch.Tensor, generator: torch.Generator | None,
                   pad: int = 2) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, batched (no per-sample Python)."""
    n, _, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    rows = dy[:, None] + torch.arange(h, device=dev)[None]
    cols = dx[:, None] + torch.arange(w, device=dev)[None]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _folder_transform(preset: Preset, augment: bool, normalize: bool = True):
    from torchvision import transforms as T

    size = preset.image_size
    steps = ([T.RandomResizedCrop(size), T.RandomHorizontalFlip()] if augment
             # ≤ 64 px (Tiny-ImageNet) is evaluated unresized, as the authors; larger images
             # resize to 256/224 of the size, then center-crop (the ImageNet protocol)
             else [T.Resize(size if size <= 64 else int(size * 256 / 224)), T.CenterCrop(size)])
    if preset.channels == 1:
        steps.insert(0, T.Grayscale(1))
    steps.append(T.ToTensor())
    if normalize:
        steps.append(T.Normalize(preset.mean, preset.std))
    return T.Compose(steps)


def _folder_split(data: RealData, split: str, augment: bool, normalize: bool = True) -> Dataset:
    base = data.train if split == "train" else data.test
    clone = _TransformedView(base, _folder_transform(data.preset, augment, normalize))
    return clone


class _TransformedView(Dataset):
    """The same samples as an ImageFolder-like dataset, with another transform."""

    def __init__(self, base, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base.samples)

    def __getitem__(self, i: int):
        path, target = self.base.samples[i]
        return self.transform(self.base.loader(path)), target


class _SampleList(Dataset):
    """A list of (path, class) pairs with ImageFolder's loader (Tiny-ImageNet's val split)."""

    def __init__(self, samples: list[tuple[str, int]], transform) -> None:
        from torchvision.datasets.folder import default_loader

        self.samples, self.transform, self.loader = samples, transform, default_loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        return self.transform(self.loader(path)), target


def load_idx_dataset(name: str, data: str | None) -> RealData:
    """An IDX dataset (Fashion-MNIST, MNIST) in memory as uint8 tensors."""
    root = _find_idx_root(name, data)
    arrays = {}
    for split, (img_name, lbl_name) in _IDX_FILES.items():
        images = read_idx(_idx_path(root, img_name))
        labels = read_idx(_idx_path(root, lbl_name))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataFormatError(f"{root}: {split} images {images.shape} and labels "
                                  f"{labels.shape} do not match")
        arrays[split] = (torch.from_numpy(images.copy()).unsqueeze(1),
                         torch.from_numpy(labels.astype(np.int64)))
    classes = (list(FASHION_MNIST_CLASSES) if name == "fashion-mnist"
               else [str(i) for i in range(10)])
    return RealData(name, get_preset(name), classes,
                    train_images=arrays["train"][0], train_labels=arrays["train"][1],
                    test_images=arrays["test"][0], test_labels=arrays["test"][1])


def load_fashion_pairs(name: str, data: str | None) -> RealData:
    """Fashion-MNIST pairs (`fashion_pairs`, 100 classes) from the Fashion-MNIST IDX files."""
    base = load_idx_dataset("fashion-mnist", data)
    train_x, train_y = fashion_pairs.make_pairs(base.train_images, base.train_labels, "train")
    test_x, test_y = fashion_pairs.make_pairs(base.test_images, base.test_labels, "test")
    return RealData(name, get_preset(name), fashion_pairs.class_names(base.class_names),
                    train_images=train_x, train_labels=train_y, test_images=test_x,
                    test_labels=test_y)


def load_folder_dataset(name: str, data: str | None, preset: Preset | None = None
                        ) -> RealData:
    """A train/ + val/ class-folder dataset (Tiny-ImageNet: its val annotations)."""
    from torchvision.datasets import ImageFolder

    if data is None:
        raise DataNotFoundError(f"--data is required for {name}",
                                "pass the folder holding train/ and val/")
    root = Path(data)
    if not (root / "train").is_dir():
        raise DataNotFoundError(f"{root / 'train'} does not exist",
                                f"{name} needs train/ and val/ class folders under --data")
    preset = preset or get_preset(name)
    train = ImageFolder(str(root / "train"), transform=_folder_transform(preset, augment=True))
    class_names = list(train.classes)
    if name == "tiny-imagenet":
        test = _tiny_val(root, train.class_to_idx, _folder_transform(preset, augment=False))
        words = root / "words.txt"
        if words.is_file():
            lookup = dict(line.rstrip("\n").split("\t", 1) for line in words.open() if "\t" in line)
            class_names = [lookup.get(c, c) for c in class_names]
    else:
        if not (root / "val").is_dir():
            raise DataNotFoundError(f"{root / 'val'} does not exist",
                                    f"{name} needs train/ and val/ class folders under --data")
        test = ImageFolder(str(root / "val"), transform=_folder_transform(preset, augment=False))
        if test.classes != train.classes:
            raise DataFormatError(f"{root}: val/ classes differ from train/ classes")
    return RealData(name, preset, class_names, train=train, test=test)


def _tiny_val(root: Path, class_to_idx: dict[str, int], transform) -> Dataset:
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataNotFoundError(f"{annotations} does not exist",
                                "expected the standard Tiny-ImageNet download layout")
    samples = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in class_to_idx:
            raise DataFormatError(
                f"{annotations}:{number}: expected <image>\\t<class id of train/> "
                f"(got {line[:60]!r})", "expected the standard Tiny-ImageNet download layout")
        samples.append((str(root / "val" / "images" / parts[0]), class_to_idx[parts[1]]))
    return _SampleList(samples, transform)


def load_dataset(name: str, data: str | None = None,
                 geometry: dict[str, Any] | None = None) -> RealData:
    """Load a dataset by name; nothing is downloaded.

    `imagefolder` takes its geometry from the data (`data/geometry.py`), or from
    `geometry` (a teacher's data.json: image_size, channels, mean, std, recipe) so every
    stage after squeeze sees the folder exactly as the teacher did.
    """
    if name == "imagefolder":
        return load_imagefolder(data, geometry)
    return DATASETS.get(name).loader(name, data)


# Small folders (at most this many pixel bytes, images <= 64 px) are decoded into memory:
# the batched pad-crop-flip path of the IDX datasets instead of per-image DataLoader work.
IN_MEMORY_BYTES = 1 << 30


def load_imagefolder(data: str | None, geometry: dict[str, Any] | None = None,
                     info: FolderInfo | None = None) -> RealData:
    """A user's ImageFolder at its own (or the given) size and channels."""
    geometry = dict(geometry or {})
    data = data or geometry.get("root")  # the folder the teacher was trained on
    if data is None:
        raise DataNotFoundError("--data is required for imagefolder",
                                "pass the folder holding train/ and val/")
    if "image_size" not in geometry or "channels" not in geometry:
        info = info or inspect_folder(data)
        geometry.update(image_size=info.image_size, channels=info.channels)
    size, channels = int(geometry["image_size"]), int(geometry["channels"])
    recipe = get_preset(geometry.get("recipe") or recipe_for(size))
    root = Path(data)
    train_files, val_files = image_files(root, "train"), image_files(root, "val")
    classes = sorted({c for c, _ in train_files})
    if size <= 64 and (len(train_files) + len(val_files)) * size * size * channels \
            <= IN_MEMORY_BYTES:
        index = {c: i for i, c in enumerate(classes)}
        train_x, train_y = _decode(train_files, index, size, channels)
        test_x, test_y = _decode(val_files, index, size, channels)
        mean, std = geometry.get("mean"), geometry.get("std")
        if mean is None or std is None:
            pixels = train_x.float().div_(255)
            mean = pixels.mean(dim=(0, 2, 3)).tolist()
            std = pixels.std(dim=(0, 2, 3)).tolist()
        preset = replace(recipe, image_size=size, channels=channels,
                         mean=tuple(round(m, 4) for m in mean),
                         std=tuple(round(s, 4) for s in std))
        return RealData("imagefolder", preset, classes, train_images=train_x,
                        train_labels=train_y, test_images=test_x, test_labels=test_y)
    mean, std = geometry.get("mean"), geometry.get("std")
    if mean is None or std is None:
        index = {c: i for i, c in enumerate(classes)}
        step = max(1, len(train_files) // 1000)  # every k-th image: about 1,000 of them
        pixels = _decode(train_files[::step], index, size, channels)[0].float().div_(255)
        mean, std = pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).tolist()
    preset = replace(recipe, image_size=size, channels=channels,
                     mean=tuple(round(m, 4) for m in mean), std=tuple(round(s, 4) for s in std))
    return replace(load_folder_dataset("imagefolder", data, preset), name="imagefolder")


def _decode(files: list[tuple[str, Path]], index: dict[str, int], size: int,
            channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, C, size, size] and int64 labels; converted and resized (bilinear) if needed."""
    from PIL import Image

    images = torch.empty(len(files), channels, size, size, dtype=torch.uint8)
    for i, (_, path) in enumerate(files):
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(img)
        images[i] = torch.from_numpy(array.reshape(size, size, channels).copy()).permute(2, 0, 1)
    labels = torch.tensor([index[c] for c, _ in files], dtype=torch.int64)
    return images, labels
