"""The content-addressed artifact store (DESIGN §4).

Layout::

    root/objects/<kind>/<id>/   complete artifacts, promoted by one atomic rename
    root/staging/<id>/          work in progress (kept for resumable stages)
    root/staging/<id>.lock      per-id lock: two identical commands build one artifact

An artifact's id is the sha256 of the canonical JSON of {kind, format version,
config, parents}: the same inputs always name the same artifact, like a build cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpld_cli import __version__, dist
from lpld_cli.errors import ArtifactCorruptedError, ArtifactNotFoundError, ConfigError

FORMAT_VERSION = 1
KINDS = ("teacher", "images", "labels", "student")
# Which command makes each kind: named in "not found" errors.
MAKER = {"teacher": "lpld squeeze", "images": "lpld recover", "labels": "lpld relabel",
         "student": "lpld train"}
MANIFEST = "manifest.json"
_HASH_BLOCK = 1 << 20
_NOT_SHARED = ("rank {rank} does not see the store rank 0 is writing: under torchrun every "
               "rank needs the same --store on a shared filesystem (NFS, Lustre, …)")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A complete, promoted artifact: its folder and its manifest."""

    kind: str
    id: str
    path: Path
    manifest: dict[str, Any]
    cached: bool = False

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def parents(self) -> list[str]:
        return self.manifest["parents"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest["metrics"]

    @property
    def selectors(self) -> dict[str, Any]:
        return self.manifest.get("selectors", {})

    @property
    def payload_bytes(self) -> int:
        """Bytes of the payload files, as the manifest records them."""
        return sum(int(meta["bytes"]) for meta in self.manifest["files"].values())

    @property
    def short(self) -> str:
        return self.id[:12]

    def file(self, relpath: str) -> Path:
        return self.path / relpath

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "path": str(self.path), "cached": self.cached}


@dataclass
class Staging:
    """Work in progress for one artifact id; the build function writes its payload here."""

    kind: str
    id: str
    path: Path
    resumed: bool
    # Extra manifest keys the build may set (e.g. selectors derived from the data).
    selectors: dict[str, Any] = field(default_factory=dict)


class Store:
    """One API for every command: lookup, build-and-promote, verify."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.staging = self.root / "staging"

    # ---------------------------------------------------------------- identity
    @staticmethod
    def artifact_id(kind: str, config: dict[str, Any], parents: list[str]) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        blob = canonical_json({"kind": kind, "format": FORMAT_VERSION, "config": config,
                               "parents": list(parents)})
        return hashlib.sha256(blob.encode()).hexdigest()

    # ------------------------------------------------------------------ lookup
    def _read(self, path: Path, cached: bool = False) -> Artifact | None:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return Artifact(manifest["kind"], manifest["id"], path, manifest, cached)

    def list(self, kind: str | None = None) -> list[Artifact]:
        """Every complete artifact (of one kind), newest first."""
        kinds = [kind] if kind else list(KINDS)
        found = []
        for k in kinds:
            folder = self.objects / k
            if folder.is_dir():
                found += [a for p in folder.iterdir() if (a := self._read(p)) is not None]
        return sorted(found, key=lambda a: (a.manifest["created"], a.id), reverse=True)

    def find(self, kind: str, artifact_id: str) -> Artifact | None:
        return self._read(self.objects / kind / artifact_id)

    def cached(self, kind: str, config: dict[str, Any], parents: list[str]) -> Artifact | None:
        """The finished artifact for these inputs, if any (cheap: no payload is read)."""
        artifact_id = self.artifact_id(kind, config, parents)
        w = dist.world()
        if w.distributed:  # rank 0 decides, so no rank returns early while others build
            dist.agree(artifact_id, "the artifact id (config and parents)", w)
            found = dist.broadcast(self.find(kind, artifact_id) if w.main else None, w)
        else:
            found = self.find(kind, artifact_id)
        return None if found is None else Artifact(kind, artifact_id, found.path,
                                                   found.manifest, cached=True)

    def get(self, ref: str, kind: str | None = None, verify: bool = True) -> Artifact:
        """The artifact whose id is (or starts with) `ref`; verified, of `kind` if given."""
        ref = ref.strip().lower()
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise ConfigError(f"{ref!r} is not an artifact id",
                              "ids are hex strings; `lpld report lineage` lists them")
        matches = [a for a in self.list() if a.id.startswith(ref)]
        if not matches:
            raise ArtifactNotFoundError(f"no artifact {ref} in store {self.root}")
        if len({a.id for a in matches}) > 1:
            raise ConfigError(f"id prefix {ref} is ambiguous", "give more characters")
        artifact = matches[0]
        if kind and artifact.kind != kind:
            raise ConfigError(f"artifact {artifact.short} is a {artifact.kind}, not a {kind}",
                              f"pass the id of a {kind} (made by {MAKER[kind]})")
        if verify:
            self.verify(artifact)
        return artifact

    def newest(self, kind: str, verify: bool = True,
               where: Callable[[Artifact], bool] | None = None,
               **selectors: Any) -> Artifact:
        """The newest complete artifact of `kind` whose selectors match; else a clear error."""
        wanted = {k: v for k, v in selectors.items() if v is not None}
        for artifact in self.list(kind):
            if all(artifact.selectors.get(k) == v for k, v in wanted.items()) and (
                    where is None or where(artifact)):
                if verify:
                    self.verify(artifact)
                return artifact
        what = ", ".join(f"{k}={v}" for k, v in wanted.items())
        raise ArtifactNotFoundError(
            f"no {kind} in store {self.root}" + (f" with {what}" if what else "")
            + f"; make one with `{MAKER[kind]}` first",
            "or pass --from ID; --store or LPLD_STORE picks another store")

    def verify(self, artifact: Artifact) -> None:
        """Re-hash the payload against the manifest; raise ArtifactCorruptedError on mismatch."""
        files = artifact.manifest["files"]
        for rel, meta in files.items():
            path = artifact.path / rel
            if not path.is_file() or path.stat().st_size != meta["bytes"]:
                raise ArtifactCorruptedError(artifact.id, rel)
            if sha256_file(path) != meta["sha256"]:
                raise ArtifactCorruptedError(artifact.id, rel)
        extra = {p.relative_to(artifact.path).as_posix() for p in _walk(artifact.path)} - set(files)
        if extra:
            raise ArtifactCorruptedError(artifact.id, sorted(extra)[0])

    # ------------------------------------------------------------------- build
    @contextlib.contextmanager
    def _lock(self, artifact_id: str) -> Iterator[None]:
        self.staging.mkdir(parents=True, exist_ok=True)
        path = self.staging / f"{artifact_id}.lock"
        while True:
            handle = open(path, "a")  # noqa: SIM115 - closed below or after the yield
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:  # `lpld gc` may have unlinked the file we waited on: lock the live one
                if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        with handle:
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def produce(self, kind: str, config: dict[str, Any], parents: list[str],
                build: Callable[[Staging], dict[str, Any]], *, force: bool = False,
                resumable: bool = False, selectors: dict[str, Any] | None = None) -> Artifact:
        """Return the artifact for these inputs, building it with `build` when needed.

        `build(staging)` writes the payload into `staging.path` and returns the metrics.
        The folder is promoted by one rename, so an interrupted build never leaves a
        partial artifact under objects/. With `resumable`, a staging folder left by an
        interrupted run of the same inputs is handed back to `build` (staging.resumed).

        Under torchrun rank 0 owns the store (DESIGN §7): it holds the lock, decides
        cached / resumed / fresh and broadcasts that; every rank runs `build` (each
        writing only its own part); rank 0 hashes, writes the manifest and promotes
        once every rank's build returned. Rank 0's metrics are the artifact's.
        """
        w = dist.world()
        artifact_id = self.artifact_id(kind, config, parents)
        dist.agree(artifact_id, "the artifact id (config and parents)", w)
        with self._lock(artifact_id) if w.main else contextlib.nullcontext():
            decision = None
            if w.main:
                decision = self._decide(kind, artifact_id, force, resumable)
            decision = dist.broadcast(decision, w)
            if decision["cached"]:
                found = self.find(kind, artifact_id)
                dist.check_all(found is not None, _NOT_SHARED, w)
                return Artifact(kind, artifact_id, found.path, found.manifest, cached=True)
            work = self.staging / artifact_id
            if w.distributed:
                dist.check_all((work / decision["marker"]).is_file(), _NOT_SHARED, w)
                dist.barrier(w)
                if w.main:
                    (work / decision["marker"]).unlink()
            staging = Staging(kind, artifact_id, work, decision["resumed"],
                              dict(selectors or {}))
            metrics = build(staging)
            dist.barrier(w)
            manifest = None
            if w.main:
                manifest = self._promote(kind, artifact_id, config, parents, staging, metrics)
            manifest = dist.broadcast(manifest, w)
            return Artifact(kind, artifact_id, self.objects / kind / artifact_id, manifest,
                            cached=False)

    def _decide(self, kind: str, artifact_id: str, force: bool, resumable: bool
                ) -> dict[str, Any]:
        """Cached, resumed or fresh (under the lock); a fresh or resumed staging folder."""
        self._recover_interrupted_force(kind, artifact_id)
        if self.find(kind, artifact_id) is not None and not force:
            return {"cached": True}
        work = self.staging / artifact_id
        resumed = work.is_dir() and resumable and not force
        if work.exists() and not resumed:
            _rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        # Other ranks must see this file, or they do not share the store (DESIGN §7).
        marker = f".rank0-{os.getpid()}-{time.time_ns()}"
        if dist.world().distributed:
            (work / marker).write_text(str(self.root.resolve()))
        return {"cached": False, "resumed": resumed, "marker": marker}

    def _promote(self, kind: str, artifact_id: str, config: dict[str, Any],
                 parents: list[str], staging: Staging, metrics: dict[str, Any]
                 ) -> dict[str, Any]:
        """Hash the payload, write the manifest, make it read-only and rename it into place."""
        work = staging.path
        manifest = {
            "kind": kind, "id": artifact_id, "lpld_version": __version__,
            "format_version": FORMAT_VERSION, "config": config, "parents": list(parents),
            "created": time.time(), "selectors": staging.selectors, "metrics": metrics,
            "files": _hash_tree(work),
        }
        _write_atomic(work / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        for path in _walk(work):
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        (work / MANIFEST).chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        final = self.objects / kind / artifact_id
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # --force: swap the old one out, then drop it
            trash = self.staging / f".trash-{artifact_id}"
            if trash.exists():
                _rmtree(trash)
            os.rename(final, trash)
            os.rename(work, final)
            _rmtree(trash)
        else:
            os.rename(work, final)
        _fsync_dir(final.parent)
        return manifest

    def _recover_interrupted_force(self, kind: str, artifact_id: str) -> None:
        """A --force killed between its two renames left the old artifact in trash: restore it."""
        trash = self.staging / f".trash-{artifact_id}"
        final = self.objects / kind / artifact_id
        if trash.exists():
            if final.exists():
                _rmtree(trash)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(trash, final)


def _walk(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p != root / MANIFEST)


def _hash_tree(root: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in _walk(root)}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmtree(path: Path) -> None:
    def _writable(func: Callable[..., Any], p: str, _exc: Any) -> None:
        os.chmod(p, stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)
        func(p)

    shutil.rmtree(path, onerror=_writable)
