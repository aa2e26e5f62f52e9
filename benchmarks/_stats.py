"""Statistics over seeds and the number formats of RESULTS.md."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any


def finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_std(values: Iterable[Any]) -> dict[str, Any]:
    """Mean and sample standard deviation (0 for one value) of the finite values."""
    vals = finite(values)
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals)}


def fmt_stat(stat: dict[str, Any] | None, scale: float = 100.0, digits: int = 1,
             signed: bool = False) -> str:
    """`mean ± std` (std only over several seeds), scaled and rounded, or `n/a`."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    sign = "+" if signed and stat["mean"] >= 0 else ""
    text = f"{sign}{scale * stat['mean']:.{digits}f}"
    if stat.get("n", 1) > 1:
        text += f" ± {scale * stat['std']:.{digits}f}"
    return text


def fmt_pct(stat: dict[str, Any] | None) -> str:
    """Top-1 fractions in percent."""
    return fmt_stat(stat)


def fmt_pp(stat: dict[str, Any] | None) -> str:
    """A difference of fractions in percentage points."""
    return fmt_stat(stat, signed=True)


def fmt_num(stat: dict[str, Any] | None) -> str:
    return fmt_stat(stat, scale=1.0, digits=4)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"
