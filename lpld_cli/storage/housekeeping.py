"""Living with a store: who depends on whom, removing artifacts, collecting garbage.

Removal never orphans: an artifact whose descendants stay in the store is refused
unless the descendants go too (`recursive`). An artifact leaves objects/ by one rename
into staging/ before its files are deleted, so a crash mid-removal leaves either the
whole artifact or nothing of it under objects/ (and the leftover is garbage for `gc`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lpld_cli.errors import ConfigError
from lpld_cli.storage.requests import FOLDER as REQUESTS
from lpld_cli.storage.store import Artifact, Store, _rmtree, folder_bytes


def artifact_bytes(artifact: Artifact) -> int:
    """Everything the artifact's folder holds: the payload and the manifest."""
    manifest = artifact.path / "manifest.json"
    return artifact.payload_bytes + (manifest.stat().st_size if manifest.exists() else 0)


def children(store: Store) -> dict[str, list[Artifact]]:
    """Parent id -> the artifacts that name it as a parent (newest first)."""
    found: dict[str, list[Artifact]] = {}
    for artifact in store.list():
        for parent in artifact.parents:
            found.setdefault(parent, []).append(artifact)
    return found


def descendants(store: Store, roots: list[Artifact]) -> list[Artifact]:
    """Every artifact that depends (transitively) on one of `roots`, roots excluded."""
    kids = children(store)
    root_ids = {a.id for a in roots}
    seen: dict[str, Artifact] = {}
    todo = [a.id for a in roots]
    while todo:
        for child in kids.get(todo.pop(), []):
            if child.id not in seen and child.id not in root_ids:
                seen[child.id] = child
                todo.append(child.id)
    return list(seen.values())


def removal_plan(store: Store, refs: list[str], recursive: bool) -> list[Artifact]:
    """The artifacts `lpld rm refs` removes, descendants first; refuses to orphan any."""
    if not refs:
        raise ConfigError("name at least one artifact id", "`lpld ls` lists them")
    roots = list({a.id: a for a in (store.get(ref, verify=False) for ref in refs)}.values())
    below = descendants(store, roots)
    if below and not recursive:
        names = ", ".join(f"{a.kind} {a.short}" for a in below[:6])
        more = f" and {len(below) - 6} more" if len(below) > 6 else ""
        raise ConfigError(f"{len(below)} artifact(s) depend on it: {names}{more}",
                          "remove them too with --recursive (see them with --dry-run "
                          "--recursive), or remove them first")
    order = {"student": 0, "labels": 1, "images": 2, "teacher": 3}
    # A pruned store is a child of another label store: deeper ones go first.
    depth = {a.id: _depth(store, a) for a in below + roots}
    return sorted(below + roots, key=lambda a: (order.get(a.kind, 9), -depth[a.id], a.id))


def _depth(store: Store, artifact: Artifact) -> int:
    """Length of the longest chain of parents above `artifact` (0 for a teacher)."""
    parents = [p for ref in artifact.parents if (p := _find_any(store, ref)) is not None]
    return 1 + max((_depth(store, p) for p in parents), default=-1)


def _find_any(store: Store, artifact_id: str) -> Artifact | None:
    return next((a for k in ("teacher", "images", "labels", "student")
                 if (a := store.find(k, artifact_id)) is not None), None)


def remove(store: Store, artifacts: list[Artifact]) -> int:
    """Remove `artifacts` (in order, as `removal_plan` gives them); returns bytes freed."""
    freed = 0
    store.staging.mkdir(parents=True, exist_ok=True)
    for artifact in artifacts:
        freed += artifact_bytes(artifact)
        trash = store.staging / f".rm-{artifact.id}"
        if trash.exists():
            _rmtree(trash)
        try:
            os.rename(artifact.path, trash)  # leaves objects/ at once, whole
            _rmtree(trash)
        except OSError as exc:
            raise ConfigError(f"cannot remove {artifact.kind} {artifact.short}: "
                              f"{exc.strerror} ({exc.filename})",
                              "check that the store is writable") from None
    return freed


@dataclass(frozen=True)
class Garbage:
    """One thing under staging/ that no live process uses."""

    path: Path
    bytes: int
    why: str


def garbage(store: Store) -> list[Garbage]:
    """Staging folders and lock files that no live process holds.

    A staging folder is in use while a process holds its `<id>.lock` (an flock, released
    by the kernel when the process dies), so an unlocked one was left by a dead process:
    an interrupted resumable run (its progress is lost when removed) or a finished one.
    """
    found = _stale_requests(store)
    if not store.staging.is_dir():
        return found
    for path in sorted(store.staging.iterdir()):
        name = path.name
        with _try_lock(store.staging / f"{_owner(name)}.lock") as free:
            if not free:
                continue
        if path.is_dir():
            why = ("left by an interrupted --force or rm" if name.startswith(".")
                   else "interrupted run (no live process)")
            found.append(Garbage(path, folder_bytes(path), why))
        elif name.endswith(".lock") or name.startswith("."):
            found.append(Garbage(path, path.stat().st_size, "lock file of no live process"))
    return found


def _stale_requests(store: Store) -> list[Garbage]:
    """Request-index entries (storage/requests.py) whose artifact is gone or unreadable."""
    folder = store.root / REQUESTS
    stale = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(path.read_text())
            alive = store.find(entry["kind"], entry["artifact"]) is not None
        except (OSError, ValueError, KeyError, TypeError):
            alive = False
        if not alive:
            stale.append(Garbage(path, path.stat().st_size, "request of a removed artifact"))
    return stale


def collect(store: Store, items: list[Garbage]) -> int:
    """Delete `items` (from `garbage`), each under its lock; returns bytes freed."""
    freed = 0
    for item in items:
        key = _owner(item.path.name)
        lock = store.staging / f"{key}.lock"
        with _try_lock(lock) as free:
            if not free:  # a process took it since `garbage` looked: leave it
                continue
            if item.path.is_dir():
                _rmtree(item.path)
            elif item.path.exists() and item.path != lock:
                item.path.unlink()
            if item.path == lock or not (store.staging / key).exists():
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
            freed += item.bytes
    return freed


def _owner(name: str) -> str:
    """The artifact id of a staging entry: `<id>`, `<id>.lock`, `.trash-<id>`, `.rm-<id>`."""
    return name.removesuffix(".lock").lstrip(".").removeprefix("rm-").removeprefix("trash-")


@contextlib.contextmanager
def _try_lock(lock: Path) -> Iterator[bool]:
    """Hold `lock` without waiting if no one does (True); False when a process holds it."""
    if not lock.exists():
        yield True
        return
    try:
        handle = open(lock, "a")  # noqa: SIM115 - held for the with-block
    except OSError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

