"""The model registry (`--model`): name → builder of a freshly initialised network.

Builders take the model spec (models.factory.model_spec) and import torch/torchvision/timm
only when called, so the keys (for `--help` and validation) import no torch. Any
`timm:<name>` is accepted and built by timm.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from lpld_cli.registry import Registry, lazy

TIMM_PREFIX = "timm:"

# spec → nn.Module
MODELS: Registry[Callable[[dict[str, Any]], Any]] = Registry("model", "model")
MODELS.add("convnet", lazy("lpld_cli.models.factory", "build_convnet"),
           help="depth × [conv3x3 → BN → ReLU → avg-pool 2], --width channels")
for _arch in ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0"):
    MODELS.add(_arch, partial(lazy("lpld_cli.models.factory", "build_torchvision"), _arch),
               help="torchvision, small-input stem at ≤ 64 px")


def model_key(name: str) -> str:
    """The registry key of a --model value (`timm:<name>` → `timm:`); ConfigError if unknown."""
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        return TIMM_PREFIX
    return MODELS.check(name)


def model_choices() -> str:
    """`convnet | resnet18 | … | timm:<name>` for --help."""
    return f"{MODELS.choices()} | {TIMM_PREFIX}<name>"
