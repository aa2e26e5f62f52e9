"""Independent oracles (issue 16 deliverable 6): replayed pixels against torchvision's own
crop/resize/flip and a hand-placed CutMix patch; each loss against a hand formula in
float64; the recover objective on a tiny model against a hand computation; the CDA crop
schedule against its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from lpld_cli import recover as recover_module
from lpld_cli.data.augment import ImageBank, Row, cutmix_box, draw_row, replay
from lpld_cli.models.bn_stats import ClassStats
from lpld_cli.models.teacher import Teacher
from lpld_cli.recover import RecoverConfig, Unit, synthesize, unit_seed

# ------------------------------------------------------------------------------ replay


def _interior(start: int, length: int, size: int) -> np.ndarray:
    """Output pixels whose bilinear taps both fall inside the crop [start, start+length)."""
    src = (np.arange(size) + 0.5) * length / size - 0.5  # relative to the crop, in pixels
    return (src >= 0) & (src <= length - 1)


@pytest.mark.parametrize("seed", range(6))
def test_replayed_crop_resize_flip_equals_torchvision(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    size, b, c = 24, 5, 3
    pixels = torch.randint(0, 256, (8, c, size, size), generator=g, dtype=torch.uint8)
    images = pixels.float() / 255  # what the bank gives with mean 0, std 1
    row = draw_row(torch.tensor([3, 0, 7, 5, 1], dtype=torch.int32), size, "none", g)
    out = replay(ImageBank(pixels, [0.0] * c, [1.0] * c), row)
    assert out.shape == (b, c, size, size)
    for i in range(b):
        top, left, h, w = (int(v) for v in row.crop[i])  # integer pixel boxes (contract v2)
        want = TF.resized_crop(images[int(row.image_index[i])], top, left, h, w, [size, size],
                               interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
        if row.flip[i]:
            want = TF.horizontal_flip(want)
        rows = _interior(top, h, size)
        cols = _interior(left, w, size)
        if row.flip[i]:
            cols = cols[::-1].copy()
        # At the crop's border replay samples the neighbouring image pixel (border padding
        # of the whole image); torchvision clamps to the crop. Inside they must agree.
        assert rows.sum() >= size // 2 and cols.sum() >= size // 2
        got = out[i][:, rows][:, :, cols]
        assert torch.allclose(got, want[:, rows][:, :, cols], atol=1e-5), (i, top, left, h, w)


def test_a_flip_is_along_the_width() -> None:
    pixels = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    image = pixels.float() / 255
    row = Row(torch.tensor([0], dtype=torch.int32), torch.tensor([[0, 0, 4, 4]], dtype=torch.int32),
              torch.tensor([True]), torch.tensor([0], dtype=torch.int32), 1.0,
              torch.zeros(4, dtype=torch.int32))
    out = replay(ImageBank(pixels, [0.0], [1.0]), row)[0, 0]
    assert torch.allclose(out, image[0, 0].flip(1), atol=1e-6)


def test_a_hand_placed_cutmix_patch() -> None:
    g = torch.Generator().manual_seed(0)
    size = 12
    pixels = torch.randint(0, 256, (3, 1, size, size), generator=g, dtype=torch.uint8)
    images = pixels.float() / 255
    full = torch.tensor([[0, 0, size, size]] * 3, dtype=torch.int32)  # identity crops
    box = torch.tensor([2, 5, 6, 11], dtype=torch.int32)  # rows 2..5, columns 5..10
    row = Row(torch.tensor([0, 1, 2], dtype=torch.int32), full, torch.zeros(3, dtype=torch.bool),
              torch.tensor([2, 0, 1], dtype=torch.int32), 1 - 4 * 6 / 144, box)
    out = replay(ImageBank(pixels, [0.0], [1.0]), row)
    for slot, partner in ((0, 2), (1, 0), (2, 1)):
        expected = images[slot, 0].clone()
        for y in range(2, 6):
            for x in range(5, 11):
                expected[y, x] = images[partner, 0, y, x]
        assert torch.allclose(out[slot, 0], expected, atol=1e-6)
    # not transposed: (row 2, column 9) is the partner's, (row 9, column 2) the slot's own
    assert out[0, 0, 2, 9] == images[2, 0, 2, 9] and out[0, 0, 9, 2] == images[0, 0, 9, 2]


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.93])
def test_cutmix_lambda_is_the_kept_area(lam: float) -> None:
    box, kept = cutmix_box(lam, 32, torch.Generator().manual_seed(3))
    y1, x1, y2, x2 = (int(v) for v in box)
    assert 0 <= y1 <= y2 <= 32 and 0 <= x1 <= x2 <= 32
    assert kept == pytest.approx(1 - (y2 - y1) * (x2 - x1) / 1024)


# ------------------------------------------------------------------------------ losses


def _softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_kl_loss_is_kl_teacher_to_student_at_t_without_t_squared() -> None:
    from lpld_cli.models.losses import kl_loss

    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 10, generator=g) * 3, torch.randn(6, 10, generator=g) * 3
    for temperature in (1.0, 4.0, 20.0):
        p_t = _softmax64(t.double().numpy() / temperature)
        p_s = _softmax64(s.double().numpy() / temperature)
        want = float((p_t * (np.log(p_t) - np.log(p_s))).sum(1).mean())
        reverse = float((p_s * (np.log(p_s) - np.log(p_t))).sum(1).mean())
        got = float(kl_loss(s, t, temperature))
        assert got == pytest.approx(want, rel=1e-4, abs=1e-7)
        assert abs(got - reverse) > 1e-3 * max(abs(reverse), 1e-3) or temperature == 20.0
        assert got != pytest.approx(want * temperature ** 2, rel=1e-3) or temperature == 1.0


def test_mixed_ce_is_lambda_weighted_ce_of_both_classes() -> None:
    from lpld_cli.models.losses import mixed_ce

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 5, generator=g)
    classes = torch.tensor([0, 3, 1, 4])
    row = Row(torch.arange(4, dtype=torch.int32), torch.zeros(4, 4), torch.zeros(4, dtype=bool),
              torch.tensor([1, 2, 3, 0], dtype=torch.int32), 0.3,
              torch.tensor([0, 0, 2, 2], dtype=torch.int32))
    p = _softmax64(logits.double().numpy())
    own = -np.log(p[np.arange(4), classes.numpy()]).mean()
    partner = -np.log(p[np.arange(4), classes.numpy()[[1, 2, 3, 0]]]).mean()
    assert float(mixed_ce(logits, classes, row)) == pytest.approx(0.3 * own + 0.7 * partner,
                                                                  rel=1e-5)
    unmixed = Row(row.image_index, row.crop, row.flip, torch.arange(4, dtype=torch.int32), 1.0,
                  torch.zeros(4, dtype=torch.int32))
    assert float(mixed_ce(logits, classes, unmixed)) == pytest.approx(own, rel=1e-5)


def test_mse_gt_by_hand_on_one_slot() -> None:
    """s = (0, 0), t = (1, −1), class 0, no mix: MSE (1² + 1²)/2 = 1, CE = ln 2."""
    from lpld_cli.models.losses import student_loss
    from lpld_cli.storage.encoding import SoftTarget

    row = Row(torch.tensor([0], dtype=torch.int32), torch.zeros(1, 4),
              torch.zeros(1, dtype=bool), torch.tensor([0], dtype=torch.int32), 1.0,
              torch.zeros(4, dtype=torch.int32))
    got = student_loss("mse-gt")(torch.zeros(1, 2), SoftTarget(logits=torch.tensor([[1.0, -1.0]])),
                                 torch.tensor([0]), row, 4.0)
    assert float(got) == pytest.approx(1.0 + 0.1 * math.log(2), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_mse_gt_is_logit_mse_plus_a_tenth_of_the_mixed_ce(temperature: float) -> None:
    """G-VBSM's loss ("Ours+", Table 9): mean over slots and classes of (s − t)², on raw
    logits (no temperature), + 0.1 × the λ-mixed CE; an incomplete batch uses its filled
    slots only (the last slot is empty)."""
    from lpld_cli.models.losses import student_loss
    from lpld_cli.storage.encoding import SoftTarget

    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 6, generator=g) * 2, torch.randn(4, 6, generator=g) * 2
    classes = torch.tensor([5, 0, 2, 2])
    partners = [2, 0, 3, 1]  # slot 1 is its own partner (its patch is itself)
    row = Row(torch.tensor([0, 1, 2, 3, -1], dtype=torch.int32), torch.zeros(5, 4),
              torch.zeros(5, dtype=bool), torch.tensor([*partners, 4], dtype=torch.int32), 0.35,
              torch.tensor([1, 1, 3, 3], dtype=torch.int32))
    sd, td = s.double().numpy(), t.double().numpy()
    mse = ((sd - td) ** 2).sum() / sd.size
    log_p = np.log(_softmax64(sd))
    own = -log_p[np.arange(4), classes.numpy()].mean()
    partner = -log_p[np.arange(4), classes.numpy()[partners]].mean()
    want = mse + 0.1 * (0.35 * own + 0.65 * partner)
    got = float(student_loss("mse-gt")(s, SoftTarget(logits=t), classes, row, temperature))
    assert got == pytest.approx(want, rel=1e-5)
    scaled = ((sd - td) ** 2).mean() / temperature ** 2 + 0.1 * (0.35 * own + 0.65 * partner)
    assert got != pytest.approx(scaled, rel=1e-3) or temperature == 1.0


# ---------------------------------------------------------------------- recover objective


class _TinyNet(nn.Module):
    """conv → BN → ReLU → conv → BN → ReLU → mean-pool → linear, in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _hand_objective(net: _TinyNet, view: torch.Tensor, label: int, targets: list,
                    r_bn: float, first: float) -> float:
    """CE + r_bn · Σ_l w_l (‖μ_l − μ*_l‖₂ + ‖σ²_l − σ²*_l‖₂), w_1 = first, in float64."""
    net = net.double().requires_grad_(False)
    x = view.double()
    loss_bn = 0.0
    a1 = net.conv1(x)
    h = torch.relu(net.bn1(a1))
    a2 = net.conv2(h)
    h = torch.relu(net.bn2(a2))
    logits = net.fc(h.mean((2, 3)))[0]
    for weight, a, (mu_t, var_t) in zip((first, 1.0), (a1, a2), targets, strict=True):
        flat = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1)
        mu = flat.mean(1)
        var = ((flat - mu[:, None]) ** 2).mean(1)  # biased, as BN normalises
        loss_bn += weight * (math.sqrt(float(((mu - mu_t.double()) ** 2).sum()))
                             + math.sqrt(float(((var - var_t.double()) ** 2).sum())))
    ce = float(torch.logsumexp(logits, 0) - logits[label])
    net.float()
    return ce + r_bn * loss_bn


@pytest.mark.parametrize("first", [1.0, 10.0])
def test_recover_objective_equals_a_hand_computation(first: float) -> None:
    net = _TinyNet()
    stats = {name: ClassStats(mean=torch.randn(2, bn.num_features) * 0.3,
                              var=torch.rand(2, bn.num_features) + 0.5,
                              count=torch.tensor([5.0, 5.0]))
             for name, bn in (("bn1", net.bn1), ("bn2", net.bn2))}
    size, jitter, r_bn = 8, 2, 0.7
    teacher = Teacher(net, {"num_classes": 2}, {"channels": 1, "image_size": size,
                                                "mean": [0.5], "std": [0.25]}, stats, "t" * 12)
    config = RecoverConfig(ipc=1, iterations=1, lr=0.1, r_bn=r_bn, first_bn_multiplier=first,
                           jitter=jitter, crop_schedule="fixed", seed=5)
    targets = [(stats["bn1"].mean[1], stats["bn1"].var[1]),
               (stats["bn2"].mean[1], stats["bn2"].var[1])]
    unit = Unit("class:1", torch.tensor([1]), [t[0] for t in targets], [t[1] for t in targets])
    seen: list[float] = []
    synthesize(teacher, config, [unit], torch.device("cpu"),
               on_iteration=lambda it, loss: seen.append(loss))

    # The same draws, by hand: noise, then one crop box, one flip, one roll.
    g = torch.Generator().manual_seed(unit_seed(5, "class:1"))
    x = torch.randn(1, 1, size, size, generator=g)
    box = recover_module.sample_crop_boxes(1, size, size, g, scale=(0.08, 1.0))[0]
    flip = bool(torch.rand(1, generator=g) < 0.5)
    dy, dx = (int(v) for v in torch.randint(0, jitter + 1, (2,), generator=g))
    crop = recover_module.resized_crop(x, box[None], torch.tensor([flip]), size)
    view = torch.roll(crop, shifts=(dy, dx), dims=(2, 3))
    assert seen[0] == pytest.approx(_hand_objective(net, view, 1, targets, r_bn, first),
                                    rel=1e-4)


def test_cda_crop_schedule_is_cosine_from_full_to_008(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _TinyNet()
    teacher = Teacher(net, {"num_classes": 2}, {"channels": 1, "image_size": 8,
                                                "mean": [0.5], "std": [0.25]}, None, "t" * 12)
    scales: list[float] = []
    real = recover_module.sample_crop_boxes

    def spy(n, h, w, g, scale=(0.08, 1.0), **kw):
        scales.append(scale[0])
        return real(n, h, w, g, scale=scale, **kw)

    monkeypatch.setattr(recover_module, "sample_crop_boxes", spy)
    layers = [torch.zeros(3), torch.zeros(4)]
    unit = Unit("mixed:0-1:0", torch.tensor([0, 1]), layers, [v + 1 for v in layers])
    for schedule in ("cosine", "fixed"):
        scales.clear()
        config = RecoverConfig(ipc=1, iterations=5, lr=0.01, r_bn=0.1, first_bn_multiplier=1.0,
                               jitter=0, crop_schedule=schedule)
        synthesize(teacher, config, [unit], torch.device("cpu"))
        want = [0.08 + 0.92 * 0.5 * (1 + math.cos(math.pi * i / 5)) if schedule == "cosine"
                else 0.08 for i in range(5)]
        assert scales == pytest.approx(want)
