"""A teacher artifact's payload: weights, model spec, data info, class-wise BN statistics.

    weights.safetensors    the network's state dict (no pickle)
    bn_stats.safetensors   per BN layer L: L.mean [K, C], L.var [K, C], L.count [K]
                           (class-wise) and L.global_mean / L.global_var [C]
    model.json             the model spec (models.factory.model_spec)
    data.json              dataset, class names, image size, channels, mean, std
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpld_cli.data.augment import Row, replay
from lpld_cli.device import autocast
from lpld_cli.errors import ConfigError
from lpld_cli.models.bn_stats import ClassStats, bn_layers
from lpld_cli.models.factory import build_model
from lpld_cli.storage.store import Artifact
from lpld_cli.storage.weights import load_tensors, save_tensors, save_weights


@dataclass
class Teacher:
    """A loaded teacher: the network (eval mode) and what recover needs beside it."""

    model: nn.Module
    spec: dict[str, Any]
    data: dict[str, Any]
    class_stats: dict[str, ClassStats] | None
    artifact_id: str

    @property
    def num_classes(self) -> int:
        return self.spec["num_classes"]


def save_teacher(folder: Path, model: nn.Module, spec: dict[str, Any], data: dict[str, Any],
                 class_stats: dict[str, ClassStats]) -> None:
    save_weights(folder / "weights.safetensors", model)
    tensors: dict[str, torch.Tensor] = {}
    for name, bn in bn_layers(model).items():
        stats = class_stats[name]
        tensors[f"{name}.mean"] = stats.mean
        tensors[f"{name}.var"] = stats.var
        tensors[f"{name}.count"] = stats.count
        tensors[f"{name}.global_mean"] = bn.running_mean
        tensors[f"{name}.global_var"] = bn.running_var
    save_tensors(folder / "bn_stats.safetensors", tensors)
    (folder / "model.json").write_text(json.dumps(spec, indent=2))
    (folder / "data.json").write_text(json.dumps(data, indent=2))


def load_teacher(artifact: Artifact, device: torch.device | str = "cpu") -> Teacher:
    """Rebuild the teacher network in eval mode with its class-wise statistics."""
    if artifact.kind != "teacher":
        raise ConfigError(f"artifact {artifact.short} is a {artifact.kind}, not a teacher")
    spec = json.loads(artifact.file("model.json").read_text())
    data = json.loads(artifact.file("data.json").read_text())
    model = build_model(spec)
    model.load_state_dict(load_tensors(artifact.file("weights.safetensors")))
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tensors = load_tensors(artifact.file("bn_stats.safetensors"))
    stats = {}
    for name in bn_layers(model):
        if f"{name}.mean" in tensors:
            stats[name] = ClassStats(tensors[f"{name}.mean"].to(device),
                                     tensors[f"{name}.var"].to(device),
                                     tensors[f"{name}.count"])
    return Teacher(model, spec, data, stats or None, artifact.id)


@torch.no_grad()
def teacher_logits(model: torch.nn.Module, images: torch.Tensor, row: Row,
                   device: torch.device) -> torch.Tensor:
    """The teacher's float32 logits [B, C] for a row's augmented batch (zeros in empty slots).

    Train calls this too (online labels, the replay check), so both sides run the
    teacher the same way.
    """
    x = replay(images, row)
    with autocast(device):
        out = model(x).float()
    b = len(row.image_index)
    if out.shape[0] == b:
        return out
    padded = torch.zeros(b, out.shape[1], dtype=out.dtype, device=out.device)
    padded[:out.shape[0]] = out
    return padded
