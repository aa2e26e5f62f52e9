"""Checks of option values: an explicit invalid value (0, negative, NaN, inf) is an error.

Plumbing: no torch, no typer; every stage config validates through these, so every
command words its errors the same way.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any, TypeVar

from lpld_cli.errors import ConfigError

T = TypeVar("T")
_RATIO = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*[xX]?\s*$")


def parse_ratio(text: str | float, option: str = "--ratio") -> float:
    """`40x`, `40`, `2.5x` -> 40.0, 40.0, 2.5; anything below 1 or not a number: ConfigError."""
    hint = (f"give the reduction factor N ≥ 1, e.g. {option} 40x (keep 1/40 of the rows) "
            "or 2.5x")
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _RATIO.match(text)
        if match is None:
            raise ConfigError(f"{option} {text!r} is not a number like 40x, 40 or 2.5x", hint)
        value = float(match.group(1))
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"{option} must be at least 1x (got {text!r})", hint)
    return value


def at_least(option: str, value: int | float | None, low: int | float) -> None:
    """`value` (None: not given) is a finite number ≥ `low`."""
    if value is not None and not (math.isfinite(value) and value >= low):
        raise ConfigError(f"{option} must be at least {low} (got {value})")


def positive(option: str, value: float | None) -> None:
    """`value` (None: not given) is a finite number > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{option} must be a positive number (got {value})")


def fraction(option: str, value: float | None) -> None:
    """`value` (None: not given) is in [0, 1)."""
    if value is not None and not (math.isfinite(value) and 0 <= value < 1):
        raise ConfigError(f"{option} must be a fraction in [0, 1) (got {value})")


def one_of(option: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ConfigError(f"unknown {option} {value!r}", f"choose one of: {', '.join(choices)}")


def fill(config: T, **defaults: Any) -> T:
    """`config` with its unset (None) fields taken from `defaults` (a preset's values).

    Only None is "unset": an explicit 0 or −1 is kept (and rejected by validation).
    """
    unset = {k: v for k, v in defaults.items() if getattr(config, k) is None}
    return replace(config, **unset) if unset else config  # type: ignore[type-var]
