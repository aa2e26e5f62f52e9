"""The cosine schedule every stage decays by: the teacher's and the student's learning rate
(paper App. C: cosine LR), recover's learning rate and crop scale, the cosine temperature."""

from __future__ import annotations

import math


def cosine_decay(value: float, step: float, total: float) -> float:
    """`value` decayed along half a cosine: `value` at step 0, 0 at step `total`.

    Written as `value · 0.5 · (1 + cos(π · step / total))`, left to right, in the same
    order as every schedule had before it was shared, so the learning rates keep their bits.
    """
    return value * 0.5 * (1 + math.cos(math.pi * step / total))
