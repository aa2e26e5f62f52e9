"""Tensors on disk as safetensors (no pickle): network weights and teacher BN statistics."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write named tensors (moved to the CPU, made contiguous) to one safetensors file.

    Serialised to bytes first, then written: a full disk raises OSError (errno, path),
    which the store reports as one line, not safetensors' own exception.
    """
    Path(path).write_bytes(save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def save_weights(path: str | Path, model: nn.Module) -> None:
    """A network's state dict as safetensors."""
    save_tensors(path, model.state_dict())


def load_tensors(path: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file."""
    return load_file(str(path), device=str(device))
