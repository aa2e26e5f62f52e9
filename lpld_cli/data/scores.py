"""Prune metrics (paper appendix E.1): per-slot easiness scores of stored label rows.

The registry of `lpld prune --metric`. Every score is an *easiness* (higher = easier) per
slot, on the stored teacher logits (softmax at T = 1 where a probability is meant); prune
averages a row's filled slots. With CutMix a slot shows its own image (share λ) and its
partner's (share 1 − λ). `random` and `first` need no score. Scores use tensor methods
only, so this module (and `--help`) imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from lpld_cli.registry import Registry

Tensor = Any  # torch.Tensor, not imported here


@dataclass
class Slots:
    """A block of stored rows, slot by slot: what a score may read.

    logits [r, B, C] float; own / partner [r, B] the true class of the slot's image and of
    its CutMix partner (−1 where unknown or empty); mixed [r, B] bool (the partner is another
    slot); lam [r] the share of each slot's own image.
    """

    logits: Tensor
    own: Tensor
    partner: Tensor
    mixed: Tensor
    lam: Tensor

    @cached_property
    def share(self) -> Tensor:
        """The own image's share of each slot: λ where mixed, else 1."""
        return self.lam.float().view(-1, 1).expand_as(self.mixed).where(self.mixed, 1.0)

    @cached_property
    def prob(self) -> Tensor:
        return self.logits.float().softmax(dim=-1)

    @cached_property
    def top(self) -> Any:
        return self.prob.topk(min(2, self.prob.shape[-1]), dim=-1)

    @property
    def first(self) -> Tensor:
        return self.top.values[..., 0]

    @property
    def second(self) -> Tensor:
        values = self.top.values
        return values[..., 1] if values.shape[-1] == 2 else self.first.new_zeros(
            self.first.shape)

    def classes(self) -> tuple[Tensor, Tensor]:
        return self.own.clamp(min=0).long(), self.partner.clamp(min=0).long()


@dataclass(frozen=True)
class PruneMetric:
    score: Callable[[Slots], Tensor] | None  # per-slot easiness [r, B]; None: no score
    needs_classes: bool = False  # reads the images' true classes
    reads_logits: bool = True


PRUNE_METRICS: Registry[PruneMetric] = Registry("prune metric", "--metric")
# how a scored metric chooses: the easiest rows, the hardest, or evenly across the scores
SELECTIONS = ("easy", "hard", "uniform")
PRUNE_METRICS.add("random", PruneMetric(None), help="seeded uniform choice without replacement")
PRUNE_METRICS.add("first", PruneMetric(None), help="the first complete rows in global "
                  "(batch_id) order: the authors' released rule")


def metric(name: str, help: str, *, needs_classes: bool = False,  # noqa: A002
           reads_logits: bool = True) -> Callable[[Callable[[Slots], Tensor]], Callable]:
    """Decorator: register a per-slot score function as prune metric `name`."""

    def add(score: Callable[[Slots], Tensor]) -> Callable[[Slots], Tensor]:
        PRUNE_METRICS.add(name, PruneMetric(score, needs_classes, reads_logits), help)
        return score

    return add


def scored(name: str) -> bool:
    """Whether metric `name` computes a score (and so takes --select)."""
    return PRUNE_METRICS.get(name).score is not None


@metric("correct", "share of slots whose teacher top-1 is the slot's true class; a mixed "
        "slot counts λ for its own image's class and 1 − λ for its partner's",
        needs_classes=True)
def correct(s: Slots) -> Tensor:
    own, partner = s.classes()
    top1 = s.top.indices[..., 0]
    return s.share * (top1 == own).float() + (1 - s.share) * (top1 == partner).float()


@metric("diff", "top-1 minus top-2 softmax probability (≥ 0; a margin, class-blind)")
def diff(s: Slots) -> Tensor:
    return s.first - s.second


@metric("signed-diff", "softmax probability of the true class minus the largest other one "
        "(negative when the teacher is wrong); λ-weighted over the two classes of a mixed slot",
        needs_classes=True)
def signed_diff(s: Slots) -> Tensor:
    def margin(c: Tensor) -> Tensor:
        p_c = s.prob.gather(-1, c.unsqueeze(-1)).squeeze(-1)
        return p_c - s.second.where(s.top.indices[..., 0] == c, s.first)

    own, partner = s.classes()
    return s.share * margin(own) + (1 - s.share) * margin(partner)


@metric("cut-ratio", "the dominant image's share of a slot, max(λ, 1 − λ) (1 for an unmixed "
        "slot, 0.5 for an even CutMix)", reads_logits=False)
def cut_ratio(s: Slots) -> Tensor:
    return s.share.maximum(1 - s.share)


@metric("confidence", "largest softmax probability")
def confidence(s: Slots) -> Tensor:
    return s.first
