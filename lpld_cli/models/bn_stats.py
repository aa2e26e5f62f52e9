"""Class-wise BatchNorm statistics (paper §3.3.1, "Introducing Class-wise Supervision").

For every BatchNorm2d, per class, the mean and variance over (N, H, W) of the
layer's input. Two estimators:

- `exact`: pooled over the whole pass. Per-class sums, sums of squares and element
  counts accumulate in float64, so ranks could all_reduce them and get exactly the
  one-process result (DESIGN §7).
- `ema`: the authors' estimator. Each class present in a batch updates its own EMA
  (momentum 0.1) with that batch's mean and biased variance of its samples;
  mean starts at 0 and variance at 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lpld_cli.progress import SILENT, Reporter

BN_STATS_MODES = ("exact", "ema")
EMA_MOMENTUM = 0.1


@dataclass
class ClassStats:
    """One BN layer's class-wise statistics: mean [K, C], var [K, C], count [K] images."""

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor


def bn_layers(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


class _Accumulator:
    def __init__(self, num_classes: int, channels: int, mode: str, device: torch.device) -> None:
        f64 = {"dtype": torch.float64, "device": device}
        self.mode = mode
        self.images = torch.zeros(num_classes, dtype=torch.int64, device=device)
        if mode == "exact":
            self.sum = torch.zeros(num_classes, channels, **f64)
            self.sumsq = torch.zeros(num_classes, channels, **f64)
            self.elements = torch.zeros(num_classes, **f64)
        else:
            self.mean = torch.zeros(num_classes, channels, **f64)
            self.var = torch.ones(num_classes, channels, **f64)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # Per-sample sums in the input's precision (H·W terms), accumulated in float64.
        x = x.detach().float()
        n, _, h, w = x.shape
        sums = torch.zeros_like(self.images, dtype=torch.float64).unsqueeze(1).repeat(
            1, x.shape[1])
        sumsq = torch.zeros_like(sums)
        sums.index_add_(0, y, x.sum((2, 3)).double())
        sumsq.index_add_(0, y, x.square().sum((2, 3)).double())
        images = torch.bincount(y, minlength=len(self.images))
        self.images += images
        elements = (images * (h * w)).double()
        if self.mode == "exact":
            self.sum += sums
            self.sumsq += sumsq
            self.elements += elements
            return
        present = images > 0
        count = elements[present, None]
        mean = sums[present] / count
        var = (sumsq[present] / count - mean.square()).clamp_min(0)  # biased, as BN
        m = EMA_MOMENTUM
        self.mean[present] = (1 - m) * self.mean[present] + m * mean
        self.var[present] = (1 - m) * self.var[present] + m * var

    def result(self) -> ClassStats:
        if self.mode == "exact":
            n = self.elements.clamp_min(1)[:, None]
            mean = self.sum / n
            var = (self.sumsq / n - mean.square()).clamp_min(0)
        else:
            mean, var = self.mean, self.var
        return ClassStats(mean.float().cpu(), var.float().cpu(), self.images.cpu())


@torch.no_grad()
def class_bn_stats(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   num_classes: int, mode: str = "exact", total: int | None = None,
                   reporter: Reporter = SILENT) -> dict[str, ClassStats]:
    """Class-wise statistics of every BatchNorm2d input, in one pass with the model frozen."""
    if mode not in BN_STATS_MODES:
        raise ValueError(f"unknown bn-stats mode {mode!r}")
    model.eval()  # global running statistics and parameters stay untouched
    layers = bn_layers(model)
    device = next(model.parameters()).device
    accumulators = {name: _Accumulator(num_classes, bn.num_features, mode, device)
                    for name, bn in layers.items()}
    labels: list[torch.Tensor] = []
    hooks = [bn.register_forward_pre_hook(
        lambda _m, inp, acc=accumulators[name]: acc.update(inp[0], labels[-1]))
        for name, bn in layers.items()]
    task = reporter.task("class-wise BN statistics", total)
    try:
        for x, y in batches:
            labels.append(y)
            model(x)
            labels.clear()
            task.advance(1)
    finally:
        for hook in hooks:
            hook.remove()
        task.close()
    return {name: acc.result() for name, acc in accumulators.items()}
