"""Data-parallel student training (issue 13, DESIGN §7): the slots of every row split
across the ranks.

Under torchrun every rank replays the same pool row at each step; rank r takes its
slice of the row's filled slots (`slices`: contiguous, the first `valid mod N` one slot
larger, so rank 0 always has one), replays only those slots' pixels (and their CutMix
partners': v2 replay is a per-slot function, so a subset is bit-identical to the same
slots of the whole row) and runs the student on them. The student's outputs of every
slice are all-gathered, so every rank evaluates the whole row's loss on the whole row's
outputs, as one process would, with the gradient flowing only through its own slots;
that loss × N under DistributedDataParallel (which averages the ranks' gradients) gives
exactly the whole row's gradient. What differs from one process is BatchNorm: each rank
normalises with its slice's statistics (the authors' multi-GPU behaviour) and DDP keeps
rank 0's running statistics; `sync_bn` (CUDA only) uses SyncBatchNorm, the whole row's
statistics. Both, and the gradient's split, change the student's numbers: the world size
is part of the student's identity (`TrainConfig.world_size`).

One process: every method is a pass-through (the one-process student is unchanged).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from lpld_cli import dist
from lpld_cli.data.augment import ImageBank, Row, Slots, replay, replay_slots
from lpld_cli.errors import ConfigError
from lpld_cli.models.evaluate import evaluate


def slices(valid: int, size: int) -> list[torch.Tensor]:
    """The slot numbers of each rank: `valid` filled slots in `size` contiguous slices,
    the first `valid mod size` one slot larger (some are empty when valid < size)."""
    return list(torch.tensor_split(torch.arange(valid), size))


def check_sync_bn(sync_bn: bool, device: torch.device) -> None:
    if sync_bn and device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU kernel)",
                          "drop --sync-bn: on CPU each rank normalises with its own slice's "
                          "statistics")


class RowSplit:
    """This rank's part of each training step (a pass-through on one process)."""

    def __init__(self, model: nn.Module, device: torch.device, sync_bn: bool = False,
                 w: dist.World | None = None) -> None:
        self.w = w or dist.world()
        self.model = model
        self.net: nn.Module = model
        self._unused: torch.Tensor | None = None
        self._slots: torch.Tensor | None = None
        if not self.w.distributed:
            return
        check_sync_bn(sync_bn, device)
        if sync_bn:  # in place: the same parameters (the optimizer's) and buffers
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.model = model
        # harmless for 1-channel inputs (a [C, 1, k, k] grad's strides): not for users
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        self.net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)

    def pixels(self, bank: ImageBank, row: Row, size: int, contract: int) -> torch.Tensor:
        """The student's input: the whole row's filled slots, or this rank's slice (a rank
        with no slot replays slot 0 and adds nothing to the gradient)."""
        valid = row.valid
        mine = slices(valid, self.w.size)[self.w.rank]
        self._slots = mine
        self._empty = len(mine) == 0
        take = mine if len(mine) else torch.zeros(1, dtype=torch.long)
        if contract == 2:
            return replay_slots(bank, Slots.of([row], len(row.image_index)), size, take)
        return replay(bank, row, size, contract)[take.to(bank.device)]

    def whole(self, out: torch.Tensor, valid: int) -> torch.Tensor:
        """The outputs of the row's filled slots [valid, C]: every rank's slice (gathered,
        constant) with this rank's own live in its place, so the loss is the whole row's."""
        if not self.w.distributed:
            return out
        import torch.distributed as td

        parts = slices(valid, self.w.size)
        width = len(parts[0])
        live = out[:0] if self._empty else out
        self._unused = out if self._empty else None
        padded = torch.zeros(width, *out.shape[1:], dtype=out.dtype, device=out.device)
        padded[:len(live)] = live.detach()
        gathered = [torch.empty_like(padded) for _ in range(self.w.size)]
        td.all_gather(gathered, padded)
        pieces = [live if r == self.w.rank else gathered[r][:len(p)]
                  for r, p in enumerate(parts)]
        return torch.cat(pieces)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate the whole row's loss: × N, since DDP averages the ranks' gradients
        (each rank's holds only its slots' share)."""
        if not self.w.distributed:
            loss.backward()
            return
        scaled = loss * self.w.size
        if self._unused is not None:  # no slot here: DDP still needs every parameter's grad
            scaled = scaled + 0.0 * self._unused.sum()
        scaled.backward()

    def sync_buffers(self) -> None:
        """Every rank takes rank 0's BatchNorm running statistics (the ones it saves)."""
        if self.w.distributed:
            import torch.distributed as td

            for buffer in self.model.buffers():
                td.broadcast(buffer, 0)

    def evaluate(self, data: Any, device: torch.device) -> dict[str, float]:
        """Top-1 (and top-5) of the student with rank 0's statistics, the test batches
        sharded across ranks and the integer counts all-reduced (one process's figures)."""
        self.sync_buffers()
        return evaluate(self.model, data, device, world=self.w)
