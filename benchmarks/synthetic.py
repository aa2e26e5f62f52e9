"""An image set and a teacher at any shape without any data: random pixels, seeded random
weights. Throughput does not depend on content, so this is how relabel is measured at
ImageNet shape (1,000 classes, 224 px, ResNet-18) on a machine without ImageNet.
"""

from __future__ import annotations

from typing import Any

import torch

from lpld_cli.models.bn_stats import ClassStats, bn_layers
from lpld_cli.models.factory import build_model, model_spec
from lpld_cli.models.teacher import save_teacher
from lpld_cli.storage.images import save_image_set
from lpld_cli.storage.store import Artifact, Store

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def synthetic_teacher(store: Store, arch: str = "resnet18", classes: int = 1000,
                      image_size: int = 224, channels: int = 3, seed: int = 0,
                      **spec_options: Any) -> Artifact:
    """A teacher artifact with seeded random weights (eval-mode BN: its initial running
    statistics) and placeholder class-wise statistics (relabel never reads them)."""
    config = {"synthetic": arch, "classes": classes, "image_size": image_size,
              "channels": channels, "seed": seed, **spec_options}

    def build(staging) -> dict[str, Any]:
        torch.manual_seed(seed)
        spec = model_spec(arch, classes, channels, image_size, **spec_options)
        model = build_model(spec).eval()
        stats = {name: ClassStats(torch.zeros(classes, bn.num_features),
                                  torch.ones(classes, bn.num_features),
                                  torch.zeros(classes, dtype=torch.int64))
                 for name, bn in bn_layers(model).items()}
        mean, std = ((IMAGENET_MEAN, IMAGENET_STD) if channels == 3
                     else ((0.5,) * channels, (0.25,) * channels))
        data = {"dataset": f"synthetic-{image_size}", "class_names": [str(c) for c in
                                                                       range(classes)],
                "image_size": image_size, "channels": channels, "mean": list(mean),
                "std": list(std)}
        save_teacher(staging.path, model, spec, data, stats)
        return {"top1": 0.0}

    return store.produce("teacher", config, [], build,
                         selectors={"dataset": f"synthetic-{image_size}", "model": arch})


def synthetic_images(store: Store, teacher: Artifact, per_class: int = 2, classes: int = 1000,
                     image_size: int = 224, channels: int = 3, seed: int = 0) -> Artifact:
    """An image set of random uint8 pixels, `per_class` images of each class, child of
    `teacher`."""
    config = {"synthetic_images": per_class, "classes": classes, "image_size": image_size,
              "channels": channels, "seed": seed}

    def build(staging) -> dict[str, Any]:
        g = torch.Generator().manual_seed(seed)
        n = per_class * classes
        pixels = torch.randint(0, 256, (n, channels, image_size, image_size), generator=g,
                               dtype=torch.uint8)
        labels = torch.arange(classes).repeat_interleave(per_class)
        save_image_set(staging.path, pixels, labels, [str(c) for c in range(classes)])
        return {"images": n, "classes": classes}

    return store.produce("images", config, [teacher.id], build,
                         selectors={"dataset": f"synthetic-{image_size}", "ipc": per_class,
                                    "method": "random", "teacher": teacher.id})
