"""The model factory: `convnet`, torchvision classifiers with a small-input stem, `timm:<name>`.

A model is described by a plain-JSON spec (arch, classes, channels, image size,
width, depth) saved beside its weights, so any artifact can rebuild its network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpld_cli.errors import ConfigError

TORCHVISION_ARCHS = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0")
ARCHS = ("convnet", *TORCHVISION_ARCHS, "timm:<name>")
_SMALL_INPUT = 64  # below this many pixels, torchvision models get the CIFAR-style stem


class ConvNet(nn.Module):
    """The dataset-distillation ConvNet: depth × [conv3x3 → BN → ReLU → avg-pool 2]."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int, width: int = 64,
                 depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_chans, image_size
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            channels, size = width, size // 2
        if size < 1:
            raise ConfigError(f"convnet depth {depth} is too deep for {image_size}px images",
                              "lower --depth")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def model_spec(arch: str, num_classes: int, in_chans: int, image_size: int,
               width: int = 64, depth: int = 3) -> dict[str, Any]:
    """The JSON spec that `build_model` rebuilds a network from."""
    spec: dict[str, Any] = {"arch": arch, "num_classes": num_classes, "in_chans": in_chans,
                            "image_size": image_size}
    if arch == "convnet":
        spec.update(width=width, depth=depth)
    return spec


def build_model(spec: dict[str, Any]) -> nn.Module:
    """A freshly initialised network (never downloads weights)."""
    arch, k, c, size = spec["arch"], spec["num_classes"], spec["in_chans"], spec["image_size"]
    if arch == "convnet":
        return ConvNet(k, c, size, spec.get("width", 64), spec.get("depth", 3))
    if arch in TORCHVISION_ARCHS:
        return _torchvision(arch, k, c, size)
    if arch.startswith("timm:"):
        import timm

        name = arch.removeprefix("timm:")
        try:
            return timm.create_model(name, pretrained=False, num_classes=k, in_chans=c)
        except RuntimeError as exc:  # timm's "Unknown model"
            raise ConfigError(f"unknown timm model {name!r} ({exc})",
                              "see timm.list_models() for names") from None
    raise ConfigError(f"unknown model {arch!r}", f"choose one of: {', '.join(ARCHS)}")


def _torchvision(arch: str, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    import torchvision.models as tvm

    model = getattr(tvm, arch)(weights=None, num_classes=num_classes)
    small = image_size < _SMALL_INPUT
    if arch.startswith("resnet"):
        if small or in_chans != 3:
            model.conv1 = (nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False) if small
                           else nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False))
        if small:
            model.maxpool = nn.Identity()
    else:  # mobilenet_v2, efficientnet_b0: the first conv is features[0][0]
        old = model.features[0][0]
        if small or in_chans != 3:
            model.features[0][0] = nn.Conv2d(in_chans, old.out_channels, 3,
                                             1 if small else 2, 1, bias=False)
    return model


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: weight decay on >1-dim parameters only (not BN, biases)."""
    params = list(model.parameters())
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def check_input(model: nn.Module, spec: dict[str, Any]) -> None:
    """Fail clearly when a network cannot take this image size."""
    x = torch.zeros(2, spec["in_chans"], spec["image_size"], spec["image_size"])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError, AssertionError) as exc:  # timm asserts sizes
        raise ConfigError(f"model {spec['arch']} does not accept {spec['image_size']}px "
                          f"{spec['in_chans']}-channel images ({str(exc).splitlines()[0]})",
                          "choose another --model") from None
    finally:
        model.train(was_training)
    if out.shape != (2, spec["num_classes"]):
        raise ConfigError(f"model {spec['arch']} gives outputs of shape {tuple(out.shape)}, "
                          f"expected (2, {spec['num_classes']})")


def load_weights(model: nn.Module, file: str | Path) -> None:
    """Load a local state dict: safetensors, or a torch file read with weights_only=True."""
    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"--weights {path} does not exist", "pass a local weights file")
    try:
        if path.suffix == ".safetensors":
            from lpld_cli.storage.weights import load_tensors

            state = load_tensors(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model", "model_state_dict"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
    except Exception as exc:  # any unreadable file: one clear line
        raise ConfigError(f"--weights {path} is not a readable state dict ({exc})",
                          "use safetensors or a torch.save'd state_dict") from None
    if not isinstance(state, dict):
        raise ConfigError(f"--weights {path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ConfigError(f"--weights {path} does not match the model ({detail})",
                          "check --model, --dataset (classes, channels) and --width/--depth"
                          ) from None


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the last Linear layer (the features the classifier sees)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0].flatten(1)
