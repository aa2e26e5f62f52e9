"""Fashion-MNIST pairs: a 100-class set built deterministically from Fashion-MNIST's files.

Each image stacks two garments vertically, each squeezed to 14 × 28 px (the mean of every
two rows, rounded half up in integers), so the result keeps Fashion-MNIST's 28 × 28 size
and every model and preset that fits it. Its class is 10·a + b for the top garment's class
a and the bottom one's b: a horizontal flip keeps both garments where they are, so
augmentation never changes the label. Image i of a split sits on top of image π(i), π a
fixed permutation per split (NumPy's PCG64 seeded with PAIR_SEED and the split), so the
set is the same on every machine that has the same four IDX files.

Why: with 10 classes a soft label is 10 numbers, so labels are cheap and top-k has
little to cut. With 100 classes the label vectors dominate storage as they do on
ImageNet, and top-k (K ∈ {5, 10, 20, 50}) mirrors LPQLD's MR-k.
"""

from __future__ import annotations

import numpy as np
import torch

NAME = "fashion-mnist-pairs"
PAIR_SEED = 15
_SPLIT_SEED = {"train": 0, "test": 1}


def squeeze_rows(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 1, 28, 28] -> [N, 1, 14, 28]: each output row the rounded mean of two."""
    x = images.to(torch.int16)
    return ((x[:, :, 0::2] + x[:, :, 1::2] + 1) // 2).to(torch.uint8)


def make_pairs(images: torch.Tensor, labels: torch.Tensor, split: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's paired images uint8 [N, 1, 28, 28] and classes 10·a + b (int64)."""
    n = len(images)
    partner = np.random.default_rng([PAIR_SEED, _SPLIT_SEED[split]]).permutation(n)
    half = squeeze_rows(images)
    partner_t = torch.from_numpy(partner)
    paired = torch.cat([half, half[partner_t]], dim=2)
    return paired.contiguous(), labels.long() * 10 + labels.long()[partner_t]


def class_names(base: list[str]) -> list[str]:
    """`top / bottom` for each of the 100 classes, in class order."""
    return [f"{a} / {b}" for a in base for b in base]
