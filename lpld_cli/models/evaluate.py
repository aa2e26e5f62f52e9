"""Accuracy on the real test split, shared by squeeze and train."""

from __future__ import annotations

import torch
from torch import nn

from lpld_cli import dist
from lpld_cli.data.datasets import RealData
from lpld_cli.device import autocast
from lpld_cli.progress import SILENT, Reporter


@torch.no_grad()
def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == labels[:, None]).any(1).sum())


@torch.no_grad()
def evaluate(model: nn.Module, data: RealData, device: torch.device, batch_size: int = 500,
             reporter: Reporter = SILENT, world: dist.World = dist.SINGLE) -> dict[str, float]:
    """Top-1 and top-5 of `model` on the real test split (top-5 only when classes > 5).

    Under N ranks each evaluates the test batches b ≡ rank (mod N) and the integer
    counts are all-reduced, so every rank gets the one-process figures.
    """
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.int64)  # top-1, top-5, seen
    task = reporter.task("evaluate", -(-data.num_batches("test", batch_size) // world.size))
    for x, y in data.batches("test", batch_size, device, rank=world.rank, world=world.size):
        with autocast(device):
            logits = model(x).float()
        counts += torch.tensor([topk_correct(logits, y, 1), topk_correct(logits, y, 5), len(y)])
        task.advance(1)
    task.close()
    model.train(was_training)
    if world.distributed:
        counts = dist.all_sum_(counts.to(device), world).cpu()
    correct1, correct5, seen = (int(v) for v in counts)
    result = {"top1": correct1 / seen}
    if data.num_classes > 5:
        result["top5"] = correct5 / seen
    return result
