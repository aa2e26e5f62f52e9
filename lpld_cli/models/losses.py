"""Distillation losses, temperature schedules and the student temperature.

Soft targets (`storage.encoding.SoftTarget`) come as full logits or as LPQLD's top-k
triple. The top-k KL never builds a C-wide teacher distribution with zeros (whose log is
−inf): with fill "none" it is taken over the kept classes only, by gather,

    KL = Σ_{i ∈ top-k} p̂_i (log p̂_i − log q_i),  p̂ = softmax(v / T) over the K kept values,
    q = softmax(s / T_s) over all C classes (the student's full log-softmax, gathered),

which is LPQLD's "MR-k" loss (their masked classes contribute 0·log 0 = 0). With a fill
(min / lme) the teacher is the dense vector [v at index, fill elsewhere] at T.

Temperature schedules (LPQLD "DKR", Sec. III-D): constant, step T(e) = max(T_min, T₀·γ^⌊e/s⌋)
(their code floors at 2 and uses T₀ = 20, s = 30, γ = 0.7), cosine from T₀ to T_min.
Student temperature (LPQLD "CA", Sec. III-E): after each epoch, T_s ← argmin over
t ∈ linspace(0.01, 1, 100) of KL(p̂_T ‖ softmax(s / t)) on the epoch's last batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lpld_cli.errors import ConfigError
from lpld_cli.storage.encoding import SoftTarget

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
        return t_min + 0.5 * (t0 - t_min) * (1 + math.cos(math.pi * epoch / epochs))
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
