"""Class-wise BatchNorm statistics (paper §3.3.1, "Introducing Class-wise Supervision").

For every BatchNorm2d, per class, the mean and variance over (N, H, W) of the
layer's input. Two estimators:

- `exact`: pooled over the whole pass. Each image's per-channel sum and sum of squares
  (over H·W) is rounded to a fixed point of 2^-24 and accumulated in int64, split in
  31-bit halves so no sum can overflow: integer addition is associative, so any order
  of batches and any number of ranks (all_reduce of the integers) give the same bits
  (DESIGN §7). A guard refuses per-image sums ≥ 2^38, and a float64 running sum checks
  the result.
- `ema`: the authors' estimator. Each class present in a batch updates its own EMA
  (momentum 0.1) with that batch's mean and biased variance of its samples;
  mean starts at 0 and variance at 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lpld_cli import dist
from lpld_cli.errors import LpldError
from lpld_cli.progress import SILENT, Reporter

BN_STATS_MODES = ("exact", "ema")
EMA_MOMENTUM = 0.1
# exact mode's fixed point: 24 fractional bits; a per-image sum must stay below 2^38 so
# its fixed-point value fits 62 bits; halves of 31 bits sum exactly for 2^32 images.
FRACTION_BITS = 24
GUARD = 2.0 ** 38
_HALF = 31


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
        i64 = {"dtype": torch.int64, "device": device}
        self.mode = mode
        self.images = torch.zeros(num_classes, **i64)
        self.elements = torch.zeros(num_classes, **i64)
        if mode == "exact":
            # [hi/lo, sum/sumsq, K, C] fixed-point halves, and a float64 check
            self.fixed = torch.zeros(2, 2, num_classes, channels, **i64)
            self.check = torch.zeros(2, num_classes, channels, **f64)
        else:
            self.mean = torch.zeros(num_classes, channels, **f64)
            self.var = torch.ones(num_classes, channels, **f64)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # Per-image sums over H·W in float32 (the same bits whatever else is in the pass).
        x = x.detach().float()
        _, _, h, w = x.shape
        per_image = torch.stack([x.sum((2, 3)), x.square().sum((2, 3))]).double()  # [2, n, C]
        images = torch.bincount(y, minlength=len(self.images))
        self.images += images
        self.elements += images * (h * w)
        if self.mode == "exact":
            if not bool(per_image.abs().lt(GUARD).all()):
                raise LpldError("a class-wise BN statistic overflows the exact accumulator "
                                f"(a per-image sum ≥ 2^{int(math.log2(GUARD))})",
                                "use --bn-stats ema, or check the teacher for exploding "
                                "activations")
            q = torch.round(per_image * 2.0 ** FRACTION_BITS).long()
            halves = torch.stack([q >> _HALF, q & ((1 << _HALF) - 1)])  # [2, 2, n, C]
            self.fixed.index_add_(2, y, halves)
            self.check.index_add_(1, y, per_image)
            return
        sums, sumsq = torch.zeros(2, *self.mean.shape, dtype=torch.float64,
                                  device=x.device).index_add_(1, y, per_image)
        present = images > 0
        count = (images * (h * w)).double()[present, None]
        mean = sums[present] / count
        var = (sumsq[present] / count - mean.square()).clamp_min(0)  # biased, as BN
        m = EMA_MOMENTUM
        self.mean[present] = (1 - m) * self.mean[present] + m * mean
        self.var[present] = (1 - m) * self.var[present] + m * var

    def reduce(self, w: dist.World) -> None:
        """Sum the integer accumulators over ranks (exact) — exact mode only."""
        for t in (self.images, self.elements, self.fixed, self.check):
            dist.all_sum_(t, w)

    def result(self) -> ClassStats:
        if self.mode == "exact":
            hi, lo = self.fixed.double()
            sums = (hi * 2.0 ** _HALF + lo) / 2.0 ** FRACTION_BITS  # [2, K, C]
            err = (sums - self.check).abs().max()
            if float(err) > 1e-6 * (1 + float(self.check.abs().max())):
                raise LpldError(f"exact class-wise statistics disagree with the float64 check "
                                f"by {float(err):.3g}", "report this as a bug")
            n = self.elements.clamp_min(1).double()[:, None]
            mean = sums[0] / n
            var = (sums[1] / n - mean.square()).clamp_min(0)
        else:
            mean, var = self.mean, self.var
        return ClassStats(mean.float().cpu(), var.float().cpu(), self.images.cpu())


@torch.no_grad()
def class_bn_stats(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   num_classes: int, mode: str = "exact", total: int | None = None,
                   reporter: Reporter = SILENT, world: dist.World = dist.SINGLE
                   ) -> dict[str, ClassStats]:
    """Class-wise statistics of every BatchNorm2d input, in one pass with the model frozen.

    Under N ranks (`exact` only) each rank passes its own batches and the integer sums
    are all-reduced: every rank returns the bits one process would.
    """
    if mode == "ema" and world.distributed:
        raise ValueError("ema statistics are one ordered pass: compute them on one rank")
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
    if world.distributed:
        for acc in accumulators.values():
            acc.reduce(world)
    return {name: acc.result() for name, acc in accumulators.items()}
