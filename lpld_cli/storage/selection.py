"""Picking a parent without `--from`: the one artifact that matches, never a guess.

Selectors (dataset, ipc, method, ratio, …) narrow the candidates; when several remain
(another configuration, seed or teacher), the command stops and lists them, naming
what differs, unless the user asked for the newest (`--newest`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lpld_cli.errors import ConfigError
from lpld_cli.storage.store import Artifact, Store

# Listed candidates in an ambiguity error (the rest are counted).
_SHOWN = 8


class AmbiguousParentError(ConfigError):
    """Several artifacts match a command's selectors and differ in configuration."""


def matching(store: Store, kind: str, where: Callable[[Artifact], bool] | None = None,
             **selectors: Any) -> list[Artifact]:
    """Every complete artifact of `kind` whose selectors match (None: any), newest first."""
    wanted = {k: v for k, v in selectors.items() if v is not None}
    return [a for a in store.list(kind)
            if all(a.selectors.get(k) == v for k, v in wanted.items())
            and (where is None or where(a))]


def differences(candidates: list[Artifact]) -> list[dict[str, Any]]:
    """For each candidate, the config/selector values (and parents) that are not all equal."""
    merged = [{**a.config, **{k: v for k, v in a.selectors.items() if v is not None},
               "parents": tuple(p[:12] for p in a.parents)} for a in candidates]
    keys = sorted({k for m in merged for k in m})
    differ = [k for k in keys if len({repr(m.get(k)) for m in merged}) > 1]
    return [{k: m.get(k) for k in differ} for m in merged]


def select(store: Store, kind: str, *, newest: bool = False, verify: bool = True,
           where: Callable[[Artifact], bool] | None = None, **selectors: Any) -> Artifact:
    """The one artifact of `kind` matching `selectors` (the newest of several if `newest`).

    None: the store's not-found error (it names the command that makes one). Several
    that differ: AmbiguousParentError listing them with what differs.
    """
    found = matching(store, kind, where, **selectors)
    if not found:
        return store.newest(kind, verify=verify, where=where, **selectors)  # raises
    if len(found) > 1 and not newest:
        wanted = ", ".join(f"{k}={v}" for k, v in selectors.items() if v is not None)
        diffs = differences(found)
        lines = [f"  {a.short}  {_describe(d)}" + ("  (newest)" if i == 0 else "")
                 for i, (a, d) in enumerate(zip(found[:_SHOWN], diffs, strict=False))]
        if len(found) > _SHOWN:
            lines.append(f"  … and {len(found) - _SHOWN} more (`lpld ls {kind}`)")
        raise AmbiguousParentError(
            f"{len(found)} {kind} artifacts match" + (f" {wanted}" if wanted else "")
            + f"; they differ in {', '.join(diffs[0]) or 'nothing shown'}",
            "pass --from ID to pick one, or --newest to take the newest:\n" + "\n".join(lines))
    if verify:
        store.verify(found[0])
    return found[0]


def _describe(diff: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, tuple):
            return ",".join(v) or "-"
        return f"{v:g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={value(v)}" for k, v in diff.items())
