"""Diversity of image sets (paper §3.2): within-class cosine similarity and MMD² to real data.

Both measures use the teacher's penultimate features f(·) (the input of its last
Linear layer), the teacher being the image set's parent:

- cosine (Eq. 4, Table 1): for each class, the mean of cos(f(x), f(x')) over all
  pairs of distinct images of that class; `cosine` is the mean over classes (lower:
  more diverse), `cosine_std` its standard deviation over classes.
- MMD² (Eq. 5, Fig. 3): the biased estimate K̂_TT + K̂_SS − 2 K̂_TS between the
  synthetic features S and a seeded sample T of `real_per_class` real training
  images per class, with the Gaussian kernel k(a, b) = exp(−‖a − b‖² / h). The
  bandwidth h is the median heuristic on the real sample alone (the median squared
  distance between distinct real features), so every image set of the same
  teacher is measured with the same kernel.

Each teacher also gets a reference row: the within-class cosine of the real sample.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpld_cli.checks import at_least
from lpld_cli.data.augment import normalise
from lpld_cli.data.datasets import load_dataset
from lpld_cli.device import autocast
from lpld_cli.errors import ConfigError
from lpld_cli.models.factory import penultimate_features
from lpld_cli.models.teacher import Teacher, load_teacher
from lpld_cli.progress import SILENT, Reporter
from lpld_cli.reports import DEFAULT_REAL_PER_CLASS
from lpld_cli.storage.images import load_image_set
from lpld_cli.storage.store import Artifact, Store


@torch.no_grad()
def features(teacher: Teacher, images: torch.Tensor, device: torch.device,
             batch_size: int = 500) -> torch.Tensor:
    """Penultimate features [N, D] (float32, CPU) of uint8 or [0, 1] images [N, C, H, W]."""
    out = []
    for start in range(0, len(images), batch_size):
        x = normalise(images[start:start + batch_size].to(device), teacher.data["mean"],
                      teacher.data["std"])
        with autocast(device):
            out.append(penultimate_features(teacher.model, x).float().cpu())
    return torch.cat(out)


def within_class_cosine(feats: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Eq. 4 averaged over pairs of distinct images per class; (mean, std) over classes."""
    per_class = []
    for c in labels.unique():
        f = torch.nn.functional.normalize(feats[labels == c].double(), dim=1)
        n = len(f)
        if n < 2:
            continue
        sim = f @ f.T
        per_class.append(float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))))
    if not per_class:
        return math.nan, math.nan
    values = np.array(per_class)
    return float(values.mean()), float(values.std())


def median_bandwidth(real: torch.Tensor) -> float:
    """The median squared distance between distinct real features (median heuristic)."""
    d2 = torch.cdist(real.double(), real.double()).square()
    off = d2[~torch.eye(len(real), dtype=torch.bool)]
    return float(off.median())


def mmd2(real: torch.Tensor, synthetic: torch.Tensor, bandwidth: float) -> float:
    """Eq. 5, biased estimate, Gaussian kernel exp(−‖a − b‖² / bandwidth)."""
    r, s = real.double(), synthetic.double()

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.exp(-torch.cdist(a, b).square() / bandwidth).mean())

    return k(r, r) + k(s, s) - 2 * k(r, s)


def diversity(store: Store, artifacts: list[Artifact], *, data_root: str | None = None,
              real_per_class: int = DEFAULT_REAL_PER_CLASS, seed: int = 0,
              device: torch.device | None = None,
              reporter: Reporter = SILENT) -> list[dict[str, Any]]:
    """One row per image set (grouped by teacher, each group after its real reference row)."""
    device = device or torch.device("cpu")
    at_least("--real-per-class", real_per_class, 2)
    for art in artifacts:
        if art.kind != "images":
            raise ConfigError(f"artifact {art.short} is a {art.kind}, not an image set",
                              "pass ids of images artifacts (made by lpld recover)")
    by_teacher: dict[str, list[Artifact]] = {}
    for art in artifacts:
        by_teacher.setdefault(art.parents[0], []).append(art)
    rows: list[dict[str, Any]] = []
    task = reporter.task("diversity", len(artifacts))
    for teacher_id, group in by_teacher.items():
        teacher = load_teacher(store.get(teacher_id, kind="teacher"), device)
        data = load_dataset(teacher.data["dataset"], data_root, teacher.data)
        real_images, real_labels = data.sample_train_images(real_per_class, seed)
        real = features(teacher, real_images, device)
        bandwidth = median_bandwidth(real)
        cos, cos_std = within_class_cosine(real, real_labels)
        rows.append({"artifact": None, "method": "real-sample", "ipc": real_per_class,
                     "teacher": teacher_id, "images": len(real), "cosine": cos,
                     "cosine_std": cos_std, "mmd2": None, "bandwidth": bandwidth,
                     "real_per_class": real_per_class})
        for art in group:
            images, labels, _ = load_image_set(art.path)
            feats = features(teacher, images, device)
            cos, cos_std = within_class_cosine(feats, labels)
            rows.append({"artifact": art.id,
                         "method": art.config.get("method", art.selectors.get("method")),
                         "ipc": art.config.get("ipc", art.selectors.get("ipc")),
                         "teacher": teacher_id,
                         "images": len(images), "cosine": cos, "cosine_std": cos_std,
                         "mmd2": mmd2(real, feats, bandwidth), "bandwidth": bandwidth,
                         "real_per_class": real_per_class})
            task.advance(1)
    task.close()
    return rows


def save_grid(path: str | Path, artifacts: list[Artifact], max_classes: int = 20,
              max_images: int = 10) -> Path:
    """A PNG of classes × images for each image set, side by side, titled by method and id."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for art in artifacts:
        images, labels, names = load_image_set(art.path)
        classes = list(range(min(len(names), max_classes)))
        columns = max(int((labels == c).sum()) for c in classes)
        columns = min(columns, max_images)
        c_, h, w = images.shape[1:]
        pad = 2
        canvas = np.full((len(classes) * (h + pad) + pad, columns * (w + pad) + pad, c_), 255,
                         dtype=np.uint8)
        for row, c in enumerate(classes):
            for col, image in enumerate(images[labels == c][:columns]):
                y, x = pad + row * (h + pad), pad + col * (w + pad)
                canvas[y:y + h, x:x + w] = image.permute(1, 2, 0).numpy()
        panels.append((art, canvas, [names[c] for c in classes], h + pad))
    height = max(3.0, max(len(p[2]) for p in panels) * 0.45)  # inches of image per panel
    width = sum(height * p[1].shape[1] / p[1].shape[0] + 1.4 for p in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, height + 0.8), squeeze=False)
    for ax, (art, canvas, names, step) in zip(axes[0], panels, strict=True):
        gray = canvas.shape[2] == 1
        ax.imshow(canvas[:, :, 0] if gray else canvas, cmap="gray" if gray else None,
                  vmin=0, vmax=255, interpolation="nearest")
        ax.set_yticks([step * i + step / 2 for i in range(len(names))], names, fontsize=7)
        ax.set_xticks([])
        ax.set_title(f"{art.config.get('method')} IPC{art.config.get('ipc')}\n{art.short}",
                     fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out
