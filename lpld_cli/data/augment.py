"""Replayable augmentations: the one module relabel, train and recover share.

A stored batch ("row") records everything needed to rebuild the augmented batch
the teacher saw: which image sits in each slot, its RandomResizedCrop box as
fractions of the image, its flip, and one CutMix (partner permutation, box, λ).
`draw_row` samples a row from a generator; `replay` rebuilds the batch from a row.
Both run batched on any device: crops are one `grid_sample` call.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MIXES = ("cutmix", "none")
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass
class Row:
    """One stored batch's augmentation (CPU tensors; empty slots have image_index −1)."""

    image_index: torch.Tensor  # int32 [B]
    crop: torch.Tensor  # float32 [B, 4]: top, left, height, width as fractions
    flip: torch.Tensor  # bool [B]
    mix_index: torch.Tensor  # int32 [B]: CutMix partner slot of each slot (itself: no mix)
    mix_lambda: float  # share of each image that stays its own (1.0: no mix)
    mix_box: torch.Tensor  # int32 [4]: y1, x1, y2, x2 in pixels of the output image

    @property
    def valid(self) -> int:
        """Filled slots: they always come first; the incomplete last batch pads with −1."""
        return int((self.image_index >= 0).sum())


def sample_crop_boxes(n: int, height: int, width: int, generator: torch.Generator,
                      scale: tuple[float, float] = CROP_SCALE,
                      ratio: tuple[float, float] = CROP_RATIO) -> torch.Tensor:
    """torchvision's RandomResizedCrop box sampling, as fractions (top, left, h, w) [n, 4].

    Integer pixel boxes as torchvision draws them (10 tries, then a centre crop),
    stored as fractions so a box can be replayed at any resolution.
    """
    boxes: list[list[float]] = []
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    # One reused scalar buffer: the same draws from `generator` as fresh tensors, without
    # an allocation per draw (this loop is most of relabel's CPU cost per row).
    draw = torch.empty(1)
    for _ in range(n):
        for _ in range(10):
            target = area * draw.uniform_(scale[0], scale[1], generator=generator).item()
            aspect = math.exp(draw.uniform_(*log_ratio, generator=generator).item())
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = torch.randint(0, height - h + 1, (1,), generator=generator).item()
                left = torch.randint(0, width - w + 1, (1,), generator=generator).item()
                break
        else:  # centre crop at the closest allowed aspect ratio
            in_ratio = width / height
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                h, w = height, int(round(height * max(ratio)))
            else:
                w, h = width, height
            top, left = (height - h) // 2, (width - w) // 2
        boxes.append([top / height, left / width, h / height, w / width])
    return torch.tensor(boxes, dtype=torch.float32).reshape(n, 4)


def cutmix_box(lam: float, size: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """One CutMix box for a batch (Yun et al. 2019) and the λ its clipped area implies."""
    cut = math.sqrt(1.0 - lam)
    cut_h = cut_w = int(size * cut)
    cy = int(torch.randint(0, size, (1,), generator=generator))
    cx = int(torch.randint(0, size, (1,), generator=generator))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, size)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, size)
    lam_area = 1.0 - (y2 - y1) * (x2 - x1) / (size * size)
    return torch.tensor([y1, x1, y2, x2], dtype=torch.int32), lam_area


def draw_row(image_index: torch.Tensor, image_size: int, mix: str,
             generator: torch.Generator) -> Row:
    """Sample one batch's augmentation for the images in `image_index` (−1: empty slot)."""
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}")
    b = len(image_index)
    valid = int((image_index >= 0).sum())
    crop = torch.zeros(b, 4, dtype=torch.float32)
    crop[:valid] = sample_crop_boxes(valid, image_size, image_size, generator)
    flip = torch.zeros(b, dtype=torch.bool)
    flip[:valid] = torch.rand(valid, generator=generator) < 0.5
    mix_index = torch.arange(b, dtype=torch.int32)
    mix_box = torch.zeros(4, dtype=torch.int32)
    lam = 1.0
    if mix == "cutmix" and valid > 1:
        mix_index[:valid] = torch.randperm(valid, generator=generator).to(torch.int32)
        beta = float(torch.rand(1, generator=generator))  # λ ~ Beta(1, 1) = Uniform(0, 1)
        mix_box, lam = cutmix_box(beta, image_size, generator)
    return Row(image_index.to(torch.int32), crop, flip, mix_index,
               float(torch.tensor(lam, dtype=torch.float32)), mix_box)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor,
                 size: int) -> torch.Tensor:
    """Crop each image to its fractional box, resize to `size` (bilinear), flip where set.

    One batched, differentiable `grid_sample`: the same call serves recover (on the
    images being optimised) and relabel/train (on stored rows).
    """
    n = images.shape[0]
    boxes = boxes.to(images.device, torch.float32)
    top, left, h, w = boxes.unbind(1)
    sx = torch.where(flip.to(images.device), -w, w)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = 2 * left + w - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * top + h - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    x = images if images.is_floating_point() else images.float()
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False)


def cutmix(x: torch.Tensor, mix_index: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Paste each slot's partner (`mix_index`) into the CutMix box; λ is the kept area."""
    y1, x1, y2, x2 = (int(v) for v in box)
    if y2 <= y1 or x2 <= x1:
        return x
    out = x.clone()
    partner = x[mix_index.to(x.device, torch.long)]
    out[:, :, y1:y2, x1:x2] = partner[:, :, y1:y2, x1:x2]
    return out


def replay(images: torch.Tensor, row: Row, size: int | None = None) -> torch.Tensor:
    """Rebuild the augmented batch of a stored row: [valid, C, size, size].

    `images` are all synthetic images (normalised, any device), indexed by
    `row.image_index`; empty slots of an incomplete batch are dropped.
    """
    valid = row.valid
    size = size or images.shape[-1]
    index = row.image_index[:valid].to(images.device, torch.long)
    x = resized_crop(images[index], row.crop[:valid], row.flip[:valid], size)
    return cutmix(x, row.mix_index[:valid], row.mix_box)


def normalise(images: torch.Tensor, mean: list[float] | tuple[float, ...],
              std: list[float] | tuple[float, ...]) -> torch.Tensor:
    """uint8 image-set pixels [N, C, H, W] to the teacher's normalised float32 space.

    The one conversion relabel and train apply to stored PNGs before `replay`, so both
    feed the teacher/student bit-identical inputs.
    """
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    m = torch.tensor(list(mean), dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def epoch_generator(seed: int, epoch: int, stream: str = "relabel") -> torch.Generator:
    """The generator of one epoch: seeded by (stream, seed, epoch) so any epoch can be
    redrawn. `stream` "relabel" is what relabel stores; "online" is the online teacher's
    own stream (train --labels online), independent of every stored one."""
    digest = hashlib.sha256(f"lpld-{stream}:{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def epoch_rows(num_images: int, batch_size: int, image_size: int, mix: str, seed: int,
               epoch: int, stream: str = "relabel") -> Iterator[Row]:
    """Every row of one epoch: a fresh permutation, then one `draw_row` per batch.

    The last batch is incomplete when B does not divide N: its empty slots
    (image_index −1) sit at the end of the row.
    """
    generator = epoch_generator(seed, epoch, stream)
    order = torch.randperm(num_images, generator=generator).to(torch.int32)
    for start in range(0, num_images, batch_size):
        index = torch.full((batch_size,), -1, dtype=torch.int32)
        part = order[start:start + batch_size]
        index[:len(part)] = part
        yield draw_row(index, image_size, mix, generator)
