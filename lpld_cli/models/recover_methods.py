"""Recover methods (paper Table 4): each a recipe of batching, BN target and crop schedule.

The registry of `lpld recover --method`. A method is a named default for the three knobs
recover's synthesis loop takes; explicit --batching / --bn-target override it. `real`
optimises nothing (seeded real training images: the control). Torch-free, so `--help` and
validation read the keys without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from lpld_cli.registry import Registry


@dataclass(frozen=True)
class RecoverMethod:
    batching: str | None  # class | mixed; None: no synthesis (real images)
    bn_target: str | None  # class | global
    crop_schedule: str | None  # fixed | cosine (CDA's curriculum on the crop's minimum scale)

    @property
    def synthesises(self) -> bool:
        return self.batching is not None


RECOVER_METHODS: Registry[RecoverMethod] = Registry("recover method", "--method")
RECOVER_METHODS.add("lpld", RecoverMethod("class", "class", "fixed"),
                    help="class batching, class-wise BN target")
RECOVER_METHODS.add("sre2l", RecoverMethod("mixed", "global", "fixed"),
                    help="mixed batching, global target")
RECOVER_METHODS.add("cda", RecoverMethod("mixed", "global", "cosine"),
                    help="sre2l + crop-scale curriculum")
RECOVER_METHODS.add("real", RecoverMethod(None, None, None),
                    help="seeded random real training images, no optimisation")
