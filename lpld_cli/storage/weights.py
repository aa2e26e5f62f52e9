"""Tensors on disk as safetensors (no pickle): network weights and teacher BN statistics."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write named tensors (moved to the CPU, made contiguous) to one safetensors file."""
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def save_weights(path: str | Path, model: nn.Module) -> None:
    """A network's state dict as safetensors."""
    save_tensors(path, model.state_dict())


def load_tensors(path: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file."""
    return load_file(str(path), device=str(device))
