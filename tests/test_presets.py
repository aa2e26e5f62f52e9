"""Presets as the paper (issue 16 item 5): Tiny-ImageNet's small ResNet stem and unresized
64-px evaluation, ImageNet-21K-P's label smoothing, BN targets matched in forward order."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from lpld_cli.data.datasets import _folder_transform
from lpld_cli.data.presets import get_preset
from lpld_cli.errors import ConfigError
from lpld_cli.models.factory import build_model, model_spec
from lpld_cli.models.teacher import Teacher
from lpld_cli.recover import RecoverConfig, check_forward_order, class_unit, synthesize
from lpld_cli.squeeze import SqueezeConfig


def test_resnet18_small_stem_at_64px_and_standard_above() -> None:
    small = build_model(model_spec("resnet18", 200, 3, 64))
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    large = build_model(model_spec("resnet18", 200, 3, 96))
    reference = torchvision.models.resnet18(num_classes=200)  # the oracle: torchvision's own
    assert large.conv1.kernel_size == reference.conv1.kernel_size == (7, 7)
    assert isinstance(large.maxpool, nn.MaxPool2d)


def test_tiny_imagenet_evaluates_64px_images_unresized() -> None:
    preset = get_preset("tiny-imagenet")
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    got = _folder_transform(preset, augment=False)(Image.fromarray(pixels))
    mean, std = np.array(preset.mean), np.array(preset.std)
    want = ((pixels / 255.0 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_label_smoothing_resolved_from_the_preset_and_named_in_the_id() -> None:
    assert SqueezeConfig(dataset="imagenet-21k-p").resolved().label_smoothing == 0.2
    assert SqueezeConfig(dataset="imagenet-21k-p").identity()["label_smoothing"] == 0.2
    # 0 (every other preset) is not written, so teachers made before keep their ids
    assert "label_smoothing" not in SqueezeConfig().identity()
    with pytest.raises(ConfigError, match="label smoothing"):
        SqueezeConfig(label_smoothing=1.5).resolved()


def test_teacher_training_uses_the_label_smoothing(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path) -> None:
    import lpld_cli.squeeze as squeeze_module
    from lpld_cli.data.presets import DATASETS, DatasetEntry
    from lpld_cli.storage.store import Store
    from tests.test_registry import _toy_loader

    seen: list[float] = []
    real = nn.CrossEntropyLoss

    def recording(*args, **kwargs):
        seen.append(kwargs.get("label_smoothing", 0.0))
        return real(*args, **kwargs)

    monkeypatch.setattr(squeeze_module.nn, "CrossEntropyLoss", recording)
    preset = replace(get_preset("fashion-mnist"), image_size=8, mean=(0.5,), std=(0.25,),
                     teacher_epochs=1, teacher_batch_size=32, label_smoothing=0.2)
    DATASETS.add("toy-smooth", DatasetEntry(preset, 3, _toy_loader))
    try:
        teacher = squeeze_module.squeeze(Store(tmp_path / "s"), SqueezeConfig(
            dataset="toy-smooth", width=4, depth=1))
    finally:
        DATASETS.remove("toy-smooth")
    assert seen == [0.2] and teacher.config["label_smoothing"] == 0.2


class DeclaredOutOfOrder(nn.Module):
    """BN layers declared (named_modules order) opposite to the order forward reaches them."""

    def __init__(self, twice: bool = False) -> None:
        super().__init__()
        self.bn_late = nn.BatchNorm2d(5)
        self.bn_early = nn.BatchNorm2d(3)
        self.conv1, self.conv2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 5, 3, padding=1)
        self.head = nn.Linear(5, 3)
        self.twice = twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_early(self.conv1(x))
        if self.twice:
            x = self.bn_early(x)
        x = self.bn_late(self.conv2(x))
        return self.head(x.mean((2, 3)))


def _teacher(model: nn.Module) -> Teacher:
    model.eval()
    for i, bn in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.fill_(0.1 * (i + 1))
    data = {"channels": 1, "image_size": 8, "mean": [0.5], "std": [0.25]}
    return Teacher(model, {"num_classes": 3}, data, None, "t" * 64)


def _config() -> RecoverConfig:
    return RecoverConfig(ipc=2, iterations=2, lr=0.1, r_bn=1.0, first_bn_multiplier=10.0,
                         jitter=0, batching="class", bn_target="global", crop_schedule="fixed")


def test_bn_targets_follow_the_layers_not_the_declaration_order() -> None:
    teacher = _teacher(DeclaredOutOfOrder())
    x = synthesize(teacher, _config(), [class_unit(teacher, 0, 2, "global")],
                   torch.device("cpu"))
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_a_bn_layer_run_twice_fails_loudly() -> None:
    teacher = _teacher(DeclaredOutOfOrder(twice=True))
    with pytest.raises(ConfigError, match="bn_early ran 2 times"):
        synthesize(teacher, _config(), [class_unit(teacher, 0, 2, "global")],
                   torch.device("cpu"))
    with pytest.raises(ConfigError, match="bn_late ran 0 times"):
        check_forward_order([(1, torch.zeros(1))], ["bn_late", "bn_early"])
