"""Lineage rows as an indented text tree (`lpld report lineage`, `lpld show`)."""

from __future__ import annotations

from typing import Any


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str) and len(v) == 64:  # an id or a sha256
        return v[:12]
    return str(v)


def tree(rows: list[dict[str, Any]]) -> str:
    """Lineage rows as an indented tree, one artifact a line (also used by `lpld show`)."""
    lines = []
    for r in rows:
        pad = "  " * r["depth"]
        if r.get("missing"):
            lines.append(f"{pad}? {r['id'][:12]}  (not in this store)")
            continue
        if r.get("seen"):
            lines.append(f"{pad}{r['kind']} {r['id'][:12]}  (see above)")
            continue
        config = " ".join(f"{k}={_value(v)}" for k, v in r["config"].items())
        metrics = " ".join(f"{k}={_value(v)}" for k, v in r["metrics"].items())
        lines.append(f"{pad}{r['kind']} {r['id'][:12]}  {config}" + (f"  | {metrics}"
                                                                       if metrics else ""))
    return "\n".join(lines)
