"""Replayable augmentations: the one module relabel, train and recover share.

A stored batch ("row") records everything needed to rebuild the augmented batch
the teacher saw: which image sits in each slot, its RandomResizedCrop box in integer
pixels of the stored image, its flip, and one CutMix (partner permutation, box, λ).
`draw_row` samples a row from a generator; the replay functions rebuild the batch.

Two replay contracts (the label store's `replay` attribute says which one made it):
- v1 (round 1): row by row; the crop grid through `affine_grid` (a batched matrix
  product) on the set normalised as a whole; rows drawn from one generator per epoch.
- v2: every slot's pixels are a per-sample function of (uint8 image, stored parameters):
  gather the uint8 images, normalise per batch, build each sampling grid elementwise,
  `grid_sample`, CutMix as a masked select. Any grouping of rows (`replay_rows`) or
  subset of slots gives bit-identical pixels on one device. Each row is drawn from its
  own generator seeded by (seed, epoch, batch), so any row can be drawn on its own.
Images stay uint8 everywhere; only the gathered batch is ever float32.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MIXES = ("cutmix", "none")
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CONTRACTS = (1, 2)
CONTRACT = 2  # what relabel writes now


@dataclass
class Row:
    """One stored batch's augmentation (CPU tensors; empty slots have image_index −1)."""

    image_index: torch.Tensor  # int32 [B]
    crop: torch.Tensor  # int32 [B, 4]: top, left, height, width in pixels of the stored image
    flip: torch.Tensor  # bool [B]
    mix_index: torch.Tensor  # int32 [B]: CutMix partner slot of each slot (itself: no mix)
    mix_lambda: float  # share of each image that stays its own (1.0: no mix)
    mix_box: torch.Tensor  # int32 [4]: y1, x1, y2, x2 in pixels of the output image

    @property
    def valid(self) -> int:
        """Filled slots: they always come first; the incomplete last batch pads with −1."""
        return int((self.image_index >= 0).sum())


def crop_fractions(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Integer pixel boxes [n, 4] to fractions of the image, float32 (round 1's stored form).

    Divided in float64 then rounded once to float32: the same numbers Python's `top / h`
    gives, so a v1 store's fractions and its boxes convert both ways without loss.
    """
    return (pixels.to(torch.float64) / size).to(torch.float32)


def crop_pixels(fractions: torch.Tensor, size: int) -> torch.Tensor:
    """Fractions of a v1 store back to the integer pixel boxes they were made from."""
    return torch.round(fractions.to(torch.float64) * size).to(torch.int32)


def sample_crop_pixels(n: int, height: int, width: int, generator: torch.Generator,
                       scale: tuple[float, float] = CROP_SCALE,
                       ratio: tuple[float, float] = CROP_RATIO) -> torch.Tensor:
    """torchvision's RandomResizedCrop box sampling: int32 (top, left, h, w) [n, 4].

    Integer pixel boxes as torchvision draws them (10 tries, then a centre crop).
    """
    boxes: list[list[int]] = []
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
        boxes.append([top, left, h, w])
    return torch.tensor(boxes, dtype=torch.int32).reshape(n, 4)


def sample_crop_boxes(n: int, height: int, width: int, generator: torch.Generator,
                      scale: tuple[float, float] = CROP_SCALE,
                      ratio: tuple[float, float] = CROP_RATIO) -> torch.Tensor:
    """`sample_crop_pixels` as fractions (top, left, h, w) [n, 4] float32 (recover's form)."""
    px = sample_crop_pixels(n, height, width, generator, scale, ratio)
    return torch.stack([crop_fractions(px[:, 0], height), crop_fractions(px[:, 1], width),
                        crop_fractions(px[:, 2], height), crop_fractions(px[:, 3], width)], 1)


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
    crop = torch.zeros(b, 4, dtype=torch.int32)
    crop[:valid] = sample_crop_pixels(valid, image_size, image_size, generator)
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

    One batched, differentiable `grid_sample` through `affine_grid`: recover's crop (on the
    images being optimised) and the v1 replay contract.
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
    """Paste each slot's partner (`mix_index`) into the CutMix box (v1: one box per row)."""
    y1, x1, y2, x2 = (int(v) for v in box)
    if y2 <= y1 or x2 <= x1:
        return x
    out = x.clone()
    partner = x[mix_index.to(x.device, torch.long)]
    out[:, :, y1:y2, x1:x2] = partner[:, :, y1:y2, x1:x2]
    return out


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or [0, 1] float) pixels [N, C, H, W] to the normalised float32 space.

    Elementwise, so normalising a gathered batch gives the same bits as gathering from a
    normalised set: relabel, train and recover's real-image paths normalise per batch.
    """
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    m = torch.tensor(list(mean), dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class ImageBank:
    """An image set held as uint8 (never a float32 copy), normalised per gathered batch.

    On CUDA the set lives on the device when it takes under half of the free memory,
    else in pinned host memory and each batch's images are copied over on their own;
    on CPU it stays where it is.
    """

    def __init__(self, pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str = "cpu") -> None:
        if pixels.dtype != torch.uint8:
            raise ValueError("an image bank holds uint8 pixels")
        device = torch.device(device)
        self.device = device
        self.mean, self.std = list(mean), list(std)
        self.copies = None  # CUDA side stream of the host→device copies (host-held sets)
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            on_device = pixels.numel() < free // 2
            pixels = pixels.to(device) if on_device else pixels.pin_memory()
            if not on_device:
                self.copies = torch.cuda.Stream(device)
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def image_size(self) -> int:
        return int(self.pixels.shape[-1])

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Normalised float32 images [n, C, H, W] on the device (index −1: image 0)."""
        index = index.to(torch.long).clamp(min=0)
        if self.copies is not None:  # pinned host gather, copied on the side stream
            host = self.pixels[index].pin_memory()
            with torch.cuda.stream(self.copies):
                batch = host.to(self.device, non_blocking=True)
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.copies)
            batch.record_stream(current)
        elif self.pixels.device != self.device:
            batch = self.pixels[index].to(self.device)
        else:
            batch = self.pixels[index.to(self.pixels.device)]
        return normalise(batch, self.mean, self.std)


def _slot_grid(crop: torch.Tensor, flip: torch.Tensor, height: int, width: int, size: int,
               device: torch.device) -> torch.Tensor:
    """v2 sampling grids [n, size, size, 2], elementwise per slot (no batched matmul).

    Output pixel j of a box (left, w) samples input x = left + (j + ½)·w/size − ½,
    clamped to the box's own pixels [left, left + w − 1]: exactly a bilinear resize of
    the cropped image (torchvision's RandomResizedCrop, antialias off), mirrored when
    flipped. In grid_sample's normalised coordinates g = c + s·u_j with
    u_j = (2j + 1)/size − 1, s = ±w/W, c = (2·left + w)/W − 1, clamped to
    [(2·left + 1)/W − 1, (2·left + 2w − 1)/W − 1]. Per-slot numbers are computed in
    float64 from the integers and rounded once; g is one multiply, one add and one clamp
    per element.
    """
    crop = crop.to(torch.float64)
    top, left, h, w = crop.unbind(1)
    u = ((2 * torch.arange(size, dtype=torch.float64) + 1) / size - 1).to(torch.float32)
    u = u.to(device)
    per_slot = [torch.where(flip.to(torch.bool), -w, w) / width, (2 * left + w) / width - 1,
                (2 * left + 1) / width - 1, (2 * left + 2 * w - 1) / width - 1,
                h / height, (2 * top + h) / height - 1,
                (2 * top + 1) / height - 1, (2 * top + 2 * h - 1) / height - 1]
    sx, cx, lox, hix, sy, cy, loy, hiy = (v.to(device, torch.float32).unsqueeze(1)
                                          for v in per_slot)
    gx = torch.minimum(torch.maximum((sx * u) + cx, lox), hix)  # [n, size]
    gy = torch.minimum(torch.maximum((sy * u) + cy, loy), hiy)
    n = len(crop)
    return torch.stack([gx.unsqueeze(1).expand(n, size, size),
                        gy.unsqueeze(2).expand(n, size, size)], dim=-1)


def _box_mask(boxes: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """[n, 1, size, size] bool: inside each slot's CutMix box (y1, x1, y2, x2)."""
    boxes = boxes.to(device, torch.int64)
    ar = torch.arange(size, device=device)
    ys = (ar >= boxes[:, 0:1]) & (ar < boxes[:, 2:3])  # [n, size]
    xs = (ar >= boxes[:, 1:2]) & (ar < boxes[:, 3:4])
    return (ys.unsqueeze(2) & xs.unsqueeze(1)).unsqueeze(1)


@dataclass
class Slots:
    """The slots of a group of rows, flattened: what the v2 replay needs per slot."""

    image_index: torch.Tensor  # int64 [n] (−1: empty)
    crop: torch.Tensor  # int32 [n, 4]
    flip: torch.Tensor  # bool [n]
    partner: torch.Tensor  # int64 [n]: flat slot of the CutMix partner (itself: no mix)
    box: torch.Tensor  # int32 [n, 4]: the row's CutMix box for each slot

    @staticmethod
    def of(rows: Sequence[Row | None], batch_size: int) -> Slots:
        """Rows laid out block by block (row i: slots i·B … i·B + B − 1); None: an empty
        block (zeros), as a group's padding."""
        index, crop, flip, partner, box = [], [], [], [], []
        for i, row in enumerate(rows):
            if row is None:
                index.append(torch.full((batch_size,), -1, dtype=torch.int64))
                crop.append(torch.zeros(batch_size, 4, dtype=torch.int32))
                flip.append(torch.zeros(batch_size, dtype=torch.bool))
                partner.append(torch.arange(batch_size) + i * batch_size)
                box.append(torch.zeros(batch_size, 4, dtype=torch.int32))
                continue
            index.append(row.image_index.to(torch.int64))
            crop.append(row.crop.to(torch.int32))
            flip.append(row.flip.to(torch.bool))
            partner.append(row.mix_index.to(torch.int64) + i * batch_size)
            box.append(row.mix_box.to(torch.int32).view(1, 4).expand(batch_size, 4))
        return Slots(torch.cat(index), torch.cat(crop), torch.cat(flip), torch.cat(partner),
                     torch.cat(box))


def replay_slots(bank: ImageBank, slots: Slots, size: int | None = None,
                 subset: torch.Tensor | None = None) -> torch.Tensor:
    """The v2 pixels of every slot [n, C, size, size] (or of `subset`, flat slot numbers).

    Each slot is a per-sample function of its uint8 image and parameters (and its CutMix
    partner's), so any grouping or subset gives bit-identical pixels on one device.
    Empty slots (image −1) hold image 0 under a zero box: defined, never used.
    """
    size = size or bank.image_size
    n = len(slots.image_index)
    want = torch.arange(n) if subset is None else subset.to(torch.long)
    partner = slots.partner[want]
    need = torch.unique(torch.cat([want, partner]))  # sorted
    pos = torch.full((n,), -1, dtype=torch.long)
    pos[need] = torch.arange(len(need))
    device = bank.device
    x = bank.gather(slots.image_index[need])
    grid = _slot_grid(slots.crop[need], slots.flip[need], x.shape[-2], x.shape[-1], size,
                      device)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    own = x[pos[want].to(device)]
    mixed = x[pos[partner].to(device)]
    mask = _box_mask(slots.box[want], size, device)
    return torch.where(mask, mixed, own)


def replay_rows(bank: ImageBank, rows: Sequence[Row | None], size: int | None = None
                ) -> torch.Tensor:
    """v2: the pixels of a group of rows, [len(rows)·B, C, size, size], block by block."""
    b = next(len(r.image_index) for r in rows if r is not None)
    return replay_slots(bank, Slots.of(rows, b), size)


def replay(bank: ImageBank, row: Row, size: int | None = None, contract: int = CONTRACT
           ) -> torch.Tensor:
    """Rebuild the augmented batch of a stored row: [valid, C, size, size].

    `contract` is the store's `replay` attribute (1 for round-1 stores); empty slots of an
    incomplete batch are dropped.
    """
    valid = row.valid
    if contract == 2:
        return replay_rows(bank, [row], size)[:valid]
    if contract != 1:
        raise ValueError(f"unknown replay contract {contract!r}")
    size = size or bank.image_size
    x = bank.gather(row.image_index[:valid])
    x = resized_crop(x, crop_fractions(row.crop[:valid], x.shape[-1]), row.flip[:valid], size)
    return cutmix(x, row.mix_index[:valid], row.mix_box)


def _seed_of(*parts: object) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def epoch_generator(seed: int, epoch: int, stream: str = "relabel") -> torch.Generator:
    """The generator of one epoch: seeded by (stream, seed, epoch) so any epoch can be
    redrawn. `stream` "relabel" is what relabel stores; "online" is the online teacher's
    own stream (train --labels online), independent of every stored one."""
    return torch.Generator().manual_seed(_seed_of(f"lpld-{stream}", seed, epoch))


def epoch_order(num_images: int, seed: int, epoch: int, stream: str = "relabel"
                ) -> torch.Tensor:
    """The epoch's image order (int32 [N]): the first draw of its generator."""
    return torch.randperm(num_images, generator=epoch_generator(seed, epoch, stream)).to(
        torch.int32)


def batch_slots(order: torch.Tensor, batch: int, batch_size: int) -> torch.Tensor:
    """The image index of each slot of batch `batch` of an epoch (−1 past the end)."""
    index = torch.full((batch_size,), -1, dtype=torch.int32)
    part = order[batch * batch_size:(batch + 1) * batch_size]
    index[:len(part)] = part
    return index


def row_at(order: torch.Tensor, batch: int, batch_size: int, image_size: int, mix: str,
           seed: int, epoch: int, stream: str = "relabel") -> Row:
    """v2: one row from its own generator seeded by (stream, seed, epoch, batch)."""
    generator = torch.Generator().manual_seed(_seed_of(f"lpld-{stream}-row", seed, epoch,
                                                       batch))
    return draw_row(batch_slots(order, batch, batch_size), image_size, mix, generator)


def epoch_rows(num_images: int, batch_size: int, image_size: int, mix: str, seed: int,
               epoch: int, stream: str = "relabel", contract: int = CONTRACT
               ) -> Iterator[Row]:
    """Every row of one epoch: a fresh permutation, then one `draw_row` per batch.

    The last batch is incomplete when B does not divide N: its empty slots
    (image_index −1) sit at the end of the row. v1 draws every row from the epoch's
    generator in turn; v2 draws row b from its own generator (`row_at`).
    """
    if contract == 1:
        generator = epoch_generator(seed, epoch, stream)
        order = torch.randperm(num_images, generator=generator).to(torch.int32)
        for batch in range(math.ceil(num_images / batch_size)):
            yield draw_row(batch_slots(order, batch, batch_size), image_size, mix, generator)
        return
    order = epoch_order(num_images, seed, epoch, stream)
    for batch in range(math.ceil(num_images / batch_size)):
        yield row_at(order, batch, batch_size, image_size, mix, seed, epoch, stream)
