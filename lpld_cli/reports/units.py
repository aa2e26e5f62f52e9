"""Byte counts people can read: one unit per table, chosen from the largest value shown.

Units are binary (1 KB = 2^10 bytes … 1 GB = 2^30 bytes), as in the paper's storage
tables; `--json` output always keeps exact integer bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

from lpld_cli.errors import ConfigError

UNITS: dict[str, int] = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def check_unit(unit: str | None) -> str | None:
    """`unit` upper-cased, or None (auto); an unknown unit is a one-line error."""
    if unit is None or unit.lower() == "auto":
        return None
    key = unit.strip().upper()
    if key not in UNITS:
        raise ConfigError(f"unknown unit {unit!r}", f"choose one of: auto, {', '.join(UNITS)}")
    return key


def pick_unit(values: Iterable[int | None]) -> str:
    """The largest unit in which the largest value is at least 1 (B for an empty table)."""
    top = max((v for v in values if v), default=0)
    return next((u for u in reversed(UNITS) if top >= UNITS[u]), "B")


def in_unit(n: int | None, unit: str) -> str:
    """`n` bytes in `unit`: exact for B, else 2 decimals (2 significant digits below 0.01)."""
    if n is None:
        return "-"
    if unit == "B" or n == 0:
        return f"{n:,}"
    x = n / UNITS[unit]
    return f"{x:,.2f}" if x >= 0.01 else f"{x:.2g}"


def readable(n: int | None) -> str:
    """One byte count in its own unit, e.g. `3.42 MB` (for lines that stand alone)."""
    if n is None:
        return "-"
    unit = pick_unit([n])
    return f"{in_unit(n, unit)} {unit}"
