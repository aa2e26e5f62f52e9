"""Checks of option values: an explicit invalid value (0, negative, NaN, inf) is an error.

Plumbing: no torch, no typer; every stage config validates through these, so every
command words its errors the same way.
"""

from __future__ import annotations

import math
import re

from lpld_cli.errors import ConfigError

_RATIO = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*[xX]?\s*$")


def parse_ratio(text: str | float) -> float:
    """`40x`, `40`, `2.5x` -> 40.0, 40.0, 2.5; anything below 1 or not a number: ConfigError."""
    hint = "give the reduction factor N ≥ 1, e.g. --ratio 40x (keep 1/40 of the rows) or 2.5x"
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _RATIO.match(text)
        if match is None:
            raise ConfigError(f"--ratio {text!r} is not a number like 40x, 40 or 2.5x", hint)
        value = float(match.group(1))
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"--ratio must be at least 1x (got {text!r})", hint)
    return value
