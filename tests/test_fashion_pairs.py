"""The 100-class Fashion-MNIST pairs set, against the raw IDX files read independently."""

from __future__ import annotations

import gzip

import numpy as np
import torch

from lpld_cli.data.datasets import load_dataset
from lpld_cli.data.fashion_pairs import PAIR_SEED
from tests.conftest import FASHION_MNIST, needs_fmnist


def _raw(name: str, offset: int) -> np.ndarray:
    with gzip.open(FASHION_MNIST / f"{name}.gz") as f:
        return np.frombuffer(f.read(), np.uint8)[offset:]


@needs_fmnist
def test_pairs_by_hand() -> None:
    data = load_dataset("fashion-mnist-pairs")
    assert data.num_classes == 100 and data.preset.image_size == 28
    images = _raw("t10k-images-idx3-ubyte", 16).reshape(-1, 28, 28).astype(np.int32)
    labels = _raw("t10k-labels-idx1-ubyte", 8).astype(np.int64)
    partner = np.random.default_rng([PAIR_SEED, 1]).permutation(len(labels))
    for i in (0, 1, 9999):
        j = partner[i]
        top = (images[i, 0::2] + images[i, 1::2] + 1) // 2
        bottom = (images[j, 0::2] + images[j, 1::2] + 1) // 2
        np.testing.assert_array_equal(data.test_images[i, 0].numpy(),
                                      np.concatenate([top, bottom]).astype(np.uint8))
        assert int(data.test_labels[i]) == 10 * labels[i] + labels[j]
    assert data.class_names[29] == "Pullover / Ankle boot"
    # every class is present in both splits; a second load is identical
    assert torch.bincount(data.train_labels, minlength=100).min() > 400
    assert torch.bincount(data.test_labels, minlength=100).min() > 50
    again = load_dataset("fashion-mnist-pairs")
    assert torch.equal(again.train_images, data.train_images)
    # a horizontal flip keeps both garments in their halves, so the class stays valid
    flipped = data.test_images[:5].flip(-1)
    assert torch.equal(flipped[:, :, :14], data.test_images[:5, :, :14].flip(-1))
