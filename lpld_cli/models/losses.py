"""The student's training losses (paper §4.1 "Validate"; G-VBSM's loss for Table 9).

- `kl`: KL(softmax(t/T) ‖ softmax(s/T)), batch mean, without a T² factor (the authors' choice
  on ImageNet-1K);
- `mse-gt`: MSE on the logits + MSE_GT_CE_WEIGHT × cross-entropy on the true classes;
- hard labels: cross-entropy on the classes, λ-mixed with the CutMix partners' classes.

`student_loss(name)` builds the loss of a config once; train calls it every step with
(student logits, teacher target or None, classes, row, T of the epoch, student T or None).

Top-k soft targets and temperatures (LPQLD, issue 15): `soft_kl` takes a
`storage.encoding.SoftTarget` (full logits or the top-k triple) and never builds a C-wide
teacher distribution with zeros: with fill "none" the KL is taken over the kept classes by
gather (LPQLD's "MR-k"); with a fill (min / lme) the teacher is the dense vector
[v at index, fill elsewhere]. Temperature schedules (LPQLD "DKR"): constant, step
T(e) = max(T_min, T₀·γ^⌊e/s⌋), cosine from T₀ to T_min. Student temperature (LPQLD "CA"):
after each epoch, T_s ← argmin over t ∈ linspace(0.01, 1, 100) of KL(p̂_T ‖ softmax(s / t)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lpld_cli.data.augment import Row
from lpld_cli.errors import ConfigError
from lpld_cli.models.schedule import cosine_decay
from lpld_cli.storage.encoding import SoftTarget

LOSSES = ("kl", "mse-gt")
# G-VBSM's loss ("Ours+", Table 9): MSE on logits + this weight × CE on the true labels.
MSE_GT_CE_WEIGHT = 0.1

# (student logits [B, C], teacher target or None, classes [B], row, T, student T or None)
Loss = Callable[[torch.Tensor, SoftTarget | None, torch.Tensor, Row, float, float | None],
                torch.Tensor]


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


def student_loss(name: str) -> Loss:
    """The loss of a train config: soft targets use `name` (kl: `soft_kl`, any encoding, at
    the epoch's T and the student's T_s); a None target is a hard label."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}")

    def loss(student: torch.Tensor, target: SoftTarget | None, classes: torch.Tensor,
             row: Row, temperature: float, student_temperature: float | None = None
             ) -> torch.Tensor:
        if target is None:
            return mixed_ce(student, classes, row)
        if name == "kl":
            return soft_kl(student, target, temperature, student_temperature)
        if target.logits is None:
            raise ValueError("--loss mse-gt needs full logits, not top-k")
        return mse_gt_loss(student, target.logits, classes, row)

    return loss


TEMPERATURE_SCHEDULES = ("constant", "step", "cosine")
# LPQLD's calibration grid for the student temperature.
CALIBRATION_GRID = torch.linspace(0.01, 1.0, 100)


def soft_kl(student: torch.Tensor, target: SoftTarget, temperature: float,
            student_temperature: float | None = None) -> torch.Tensor:
    """KL(teacher_T ‖ softmax(student / T_s)), batch mean, no T² factor (the authors' choice).

    `student_temperature` None: the same T on both sides.
    """
    ts = temperature if student_temperature is None else student_temperature
    log_q = F.log_softmax(student.float() / ts, -1)
    if target.logits is None and target.fill is None:
        assert target.values is not None and target.index is not None
        log_p = F.log_softmax(target.values.float() / temperature, -1)
        kept = log_q.gather(-1, target.index)
        return (log_p.exp() * (log_p - kept)).sum(-1).mean()
    teacher = target.dense(student.shape[-1]).float()
    return F.kl_div(log_q, F.log_softmax(teacher / temperature, -1), reduction="batchmean",
                    log_target=True)


def temperature_at(schedule: str, epoch: int, epochs: int, t0: float, t_min: float,
                   step: int, gamma: float) -> float:
    """The teacher temperature of (0-based) `epoch` under `schedule`."""
    if schedule == "constant":
        return t0
    if schedule == "step":
        return max(t_min, t0 * gamma ** (epoch // step))
    if schedule == "cosine":
        return t_min + cosine_decay(t0 - t_min, epoch, epochs)
    raise ConfigError(f"unknown --temperature-schedule {schedule!r}",
                      f"choose one of: {', '.join(TEMPERATURE_SCHEDULES)}")


def lowest_temperature(schedule: str, epochs: int, t0: float, t_min: float, step: int,
                       gamma: float) -> float:
    """The smallest temperature the schedule reaches over `epochs` epochs."""
    return min(temperature_at(schedule, e, epochs, t0, t_min, step, gamma)
               for e in range(epochs))


@torch.no_grad()
def calibrate_student_temperature(student: torch.Tensor, target: SoftTarget,
                                  temperature: float) -> float:
    """LPQLD's CA: the grid t minimising KL(teacher_T ‖ softmax(student / t))."""
    losses = torch.stack([soft_kl(student, target, temperature, float(t))
                          for t in CALIBRATION_GRID])
    return float(CALIBRATION_GRID[int(torch.argmin(losses))])
