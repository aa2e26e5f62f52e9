"""A teacher artifact's payload: weights, model spec, data info, class-wise BN statistics.

    weights.safetensors    the network's state dict (no pickle)
    bn_stats.safetensors   per BN layer L: L.mean [K, C], L.var [K, C], L.count [K]
                           (class-wise) and L.global_mean / L.global_var [C]
    model.json             the model spec (models.factory.model_spec)
    data.json              dataset, class names, image size, channels, mean, std
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpld_cli.data.augment import ImageBank, Row, Slots, replay_slots
from lpld_cli.device import precision_autocast
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


def forward_logits(model: torch.nn.Module, x: torch.Tensor, device: torch.device,
                   precision: str = "fp32") -> torch.Tensor:
    """The teacher's float32 logits for a batch: inference mode, autocast at `precision`,
    channels_last on CUDA (the layout its convolutions run fastest in)."""
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), precision_autocast(device, precision):
        return model(x).float()


def group_logits(model: torch.nn.Module, bank: ImageBank, rows: Sequence[Row | None],
                 batch_size: int, device: torch.device, precision: str = "fp32"
                 ) -> torch.Tensor:
    """Replay contract v2: one forward of a group of rows, block i = rows[i] (None: an
    empty block), always [len(rows)·B, C] so the forward's shape is fixed; empty slots 0.

    A row's logits depend on the group's shape and its block, never on the other
    blocks' content (eval mode: no statistic crosses samples): what lets relabel --keep,
    a resumed run or another rank recompute any row with the same bits.
    """
    slots = Slots.of(rows, batch_size)
    return slot_logits(model, replay_slots(bank, slots), slots, device, precision)


def slot_logits(model: torch.nn.Module, pixels: torch.Tensor, slots: Slots,
                device: torch.device, precision: str = "fp32") -> torch.Tensor:
    """`group_logits` from the group's replayed pixels (relabel replays them ahead of the
    forward on CPU): one forward, empty slots 0."""
    out = forward_logits(model, pixels, device, precision)
    return out.masked_fill((slots.image_index < 0).to(out.device).unsqueeze(1), 0.0)


def teacher_logits(model: torch.nn.Module, bank: ImageBank, row: Row, device: torch.device,
                   precision: str = "fp32", rows_per_forward: int = 1, block: int = 0
                   ) -> torch.Tensor:
    """The teacher's float32 logits [B, C] for one v2 row (zeros in empty slots), computed
    as relabel does: at `block` of a forward of `rows_per_forward` rows.

    Train calls this too (online labels, the replay check), so both sides run the
    teacher the same way.
    """
    b = len(row.image_index)
    group: list[Row | None] = [None] * rows_per_forward
    group[block] = row
    return group_logits(model, bank, group, b, device, precision)[block * b:(block + 1) * b]
