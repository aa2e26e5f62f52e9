"""Image sets on disk: lossless PNGs in ImageFolder layout (DESIGN §4).

    train/<class:05d>/<k:05d>.png    uint8, L (1 channel) or RGB (3 channels)
    classes.json                     class names, index = class id

A class folder is written under a temporary name and renamed into place when all
its images are on disk, so a folder `train/<class>` is always complete: that is
what lets recover resume class by class.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES_FILE = "classes.json"


def to_uint8(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Normalised float images [N, C, H, W] to uint8 pixels (rounded, clamped)."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    pixels = (images.detach().float() * s + m).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).cpu()


def class_dir(folder: Path, c: int) -> Path:
    return folder / "train" / f"{c:05d}"


def save_class(folder: Path, c: int, images: torch.Tensor) -> None:
    """Write one class's uint8 images [n, C, H, W] atomically (temp folder, then rename)."""
    final = class_dir(folder, c)
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for k, image in enumerate(images):
        array = image.permute(1, 2, 0).numpy()
        mode = "L" if array.shape[2] == 1 else "RGB"
        Image.fromarray(array[:, :, 0] if mode == "L" else array, mode).save(
            tmp / f"{k:05d}.png", optimize=False)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


def done_classes(folder: Path) -> set[int]:
    """Classes whose folder is complete (renamed into place)."""
    root = folder / "train"
    if not root.is_dir():
        return set()
    return {int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()}


def write_class_names(folder: Path, class_names: list[str]) -> None:
    (folder / CLASSES_FILE).write_text(json.dumps(class_names, indent=1))


def save_image_set(folder: Path, images: torch.Tensor, labels: torch.Tensor,
                   class_names: list[str]) -> None:
    """Write a whole image set: uint8 images [N, C, H, W] with class labels [N]."""
    for c in range(len(class_names)):
        save_class(folder, c, images[labels == c])
    write_class_names(folder, class_names)


def load_image_set(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 images [N, C, H, W] and labels [N], ordered by (class, k); and the class names.

    Decoded straight into one preallocated tensor: peak memory is the uint8 set itself.
    """
    class_names = json.loads((folder / CLASSES_FILE).read_text())
    paths, labels = [], []
    for c in range(len(class_names)):
        found = sorted(class_dir(folder, c).glob("*.png"))
        paths += found
        labels += [c] * len(found)
    images: torch.Tensor | None = None
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            array = np.array(img)  # writable: torch shares it
        if array.ndim == 2:
            array = array[:, :, None]
        if images is None:
            h, w, ch = array.shape
            images = torch.empty((len(paths), ch, h, w), dtype=torch.uint8)
        images[i] = torch.from_numpy(array).permute(2, 0, 1)
    if images is None:
        raise ValueError(f"no images under {folder}")
    return images, torch.tensor(labels, dtype=torch.int64), class_names


def image_labels(folder: Path) -> torch.Tensor:
    """The class of every image, in `load_image_set` order, without decoding any PNG."""
    class_names = json.loads((folder / CLASSES_FILE).read_text())
    counts = [len(list(class_dir(folder, c).glob("*.png"))) for c in range(len(class_names))]
    return torch.repeat_interleave(torch.arange(len(class_names)), torch.tensor(counts))
