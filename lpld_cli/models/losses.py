"""The student's training losses (paper §4.1 "Validate"; G-VBSM's loss for Table 9).

- `kl`: KL(softmax(t/T) ‖ softmax(s/T)), batch mean, without a T² factor (the authors' choice
  on ImageNet-1K);
- `mse-gt`: MSE on the logits + MSE_GT_CE_WEIGHT × cross-entropy on the true classes;
- hard labels: cross-entropy on the classes, λ-mixed with the CutMix partners' classes.

`student_loss(name, T)` builds the loss of a config once; train calls it every step with
(student logits, teacher logits or None, classes, row).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lpld_cli.data.augment import Row

LOSSES = ("kl", "mse-gt")
# G-VBSM's loss ("Ours+", Table 9): MSE on logits + this weight × CE on the true labels.
MSE_GT_CE_WEIGHT = 0.1

# (student logits [B, C], teacher logits [B, C] or None, classes [B], row) -> scalar loss
Loss = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, Row], torch.Tensor]


def kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)), batch mean, without a T² factor (the authors' choice)."""
    return F.kl_div(F.log_softmax(student / temperature, 1),
                    F.log_softmax(teacher / temperature, 1),
                    reduction="batchmean", log_target=True)


def mixed_ce(student: torch.Tensor, classes: torch.Tensor, row: Row) -> torch.Tensor:
    """Cross-entropy on one-hot classes, λ-mixed with the CutMix partners' classes."""
    valid = row.valid
    own = F.cross_entropy(student, classes)
    if row.mix_lambda >= 1.0:
        return own
    partner = classes[row.mix_index[:valid].to(classes.device, torch.long)]
    return row.mix_lambda * own + (1 - row.mix_lambda) * F.cross_entropy(student, partner)


def mse_gt_loss(student: torch.Tensor, teacher: torch.Tensor, classes: torch.Tensor,
                row: Row) -> torch.Tensor:
    """G-VBSM's MSE on logits + MSE_GT_CE_WEIGHT × the λ-mixed cross-entropy."""
    return F.mse_loss(student, teacher) + MSE_GT_CE_WEIGHT * mixed_ce(student, classes, row)


def student_loss(name: str, temperature: float) -> Loss:
    """The loss of a train config: soft targets use `name`; a None target is a hard label."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}")

    def loss(student: torch.Tensor, target: torch.Tensor | None, classes: torch.Tensor,
             row: Row) -> torch.Tensor:
        if target is None:
            return mixed_ce(student, classes, row)
        if name == "kl":
            return kl_loss(student, target, temperature)
        return mse_gt_loss(student, target, classes, row)

    return loss
