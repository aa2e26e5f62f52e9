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
from lpld_cli.errors import (
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ConfigError,
    StoreWriteError,
    os_error_message,
    warn,
)
from lpld_cli.faults import kill_point

FORMAT_VERSION = 1
KINDS = ("teacher", "images", "labels", "student")
# Which command makes each kind: named in "not found" errors.
MAKER = {"teacher": "lpld squeeze", "images": "lpld recover", "labels": "lpld relabel",
         "student": "lpld train"}
MANIFEST = "manifest.json"
_HASH_BLOCK = 1 << 20
# A cache hit re-hashes an artifact of up to this many payload bytes before returning it;
# a larger one gets a file-list and size check (and a note saying so).
REHASH_BYTES = int(os.environ.get("LPLD_REHASH_BYTES", str(2 << 30)))
_NOT_SHARED = ("rank {rank} does not see the store rank 0 is writing: under torchrun every "
               "rank needs the same --store on a shared filesystem (NFS, Lustre, …)")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under `folder` as the file system reports them (0 if absent)."""
    return int(sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()))


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
        self._warned: set[Path] = set()

    def check_root(self, must_exist: bool = False) -> None:
        """Refuse a store path that cannot be a store: a file, a folder inside a store, a
        non-empty folder that is not a store, or (reads) a missing one."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise ConfigError(f"--store {root} is a file, not a store folder",
                              "pass the store's root folder (it holds objects/ and staging/)")
        top = next((p for p in root.resolve().parents if _is_store(p)), None)
        if top is not None:
            raise ConfigError(f"--store {root} is a folder inside the store {top}",
                              f"pass the store's root: --store {top}")
        if root.is_dir() and not (self.objects.is_dir() or self.staging.is_dir()) and any(
                root.iterdir()):
            raise ConfigError(f"--store {root} is a non-empty folder that is not an lpld store",
                              "pass an lpld store (it holds objects/), or a new or empty folder")
        if must_exist and not self.objects.is_dir():
            raise ConfigError(f"no lpld store at {root}",
                              "--store or LPLD_STORE names the store; commands create it")

    # ---------------------------------------------------------------- identity
    @staticmethod
    def artifact_id(kind: str, config: dict[str, Any], parents: list[str]) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        blob = canonical_json({"kind": kind, "format": FORMAT_VERSION, "config": config,
                               "parents": list(parents)})
        return hashlib.sha256(blob.encode()).hexdigest()

    # ------------------------------------------------------------------ lookup
    def _load(self, kind: str, path: Path) -> tuple[Artifact | None, str | None]:
        """The artifact in `path` (a folder of objects/<kind>/), or what is wrong with it."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            return None, f"{MANIFEST} is missing"
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"{MANIFEST} is unreadable ({exc.__class__.__name__})"
        except ValueError:
            return None, f"{MANIFEST} is not valid JSON"
        problem = _manifest_problem(manifest, kind, path.name)
        if problem is not None:
            return None, f"{MANIFEST}: {problem}"
        return Artifact(kind, path.name, path, manifest), None

    def _sound(self, kind: str, path: Path) -> Artifact | None:
        """The artifact in `path`; a damaged one is skipped with a warning (listing)."""
        artifact, problem = self._load(kind, path)
        if problem is not None and path not in self._warned:
            self._warned.add(path)
            warn(f"skipping damaged artifact {kind}/{path.name}: {problem} "
                 "(`lpld verify` lists every damaged artifact)")
        return artifact

    def list(self, kind: str | None = None) -> list[Artifact]:
        """Every sound complete artifact (of one kind), newest first; damaged ones are skipped
        with a warning."""
        kinds = [kind] if kind else list(KINDS)
        found = []
        for k in kinds:
            folder = self.objects / k
            if folder.is_dir():
                found += [a for p in folder.iterdir()
                          if p.is_dir() and (a := self._sound(k, p)) is not None]
        return sorted(found, key=lambda a: (a.manifest["created"], a.id), reverse=True)

    def find(self, kind: str, artifact_id: str) -> Artifact | None:
        """The artifact `artifact_id` of `kind`, or None when there is no such folder.

        A folder whose manifest is damaged is refused (never read as "absent": a later
        build would otherwise silently replace it).
        """
        path = self.objects / kind / artifact_id
        if not path.exists():
            return None
        artifact, problem = self._load(kind, path)
        if artifact is None:
            raise ArtifactCorruptedError(artifact_id, str(problem))
        return artifact

    def cached(self, kind: str, config: dict[str, Any], parents: list[str]) -> Artifact | None:
        """The finished artifact for these inputs, if any, checked before it is returned.

        The payload is re-hashed up to REHASH_BYTES; above that only the file list and sizes
        are checked (a note says so; `lpld verify ID` re-hashes). Damage raises
        ArtifactCorruptedError naming `lpld verify`.
        """
        artifact_id = self.artifact_id(kind, config, parents)
        w = dist.world()
        # rank 0 finds and checks, so under torchrun no rank returns early while others build
        dist.agree(artifact_id, "the artifact id (config and parents)", w)
        found = dist.broadcast(self._checked(kind, artifact_id) if w.main else None, w)
        if isinstance(found, ArtifactCorruptedError):
            raise found  # on every rank: none waits for a build that will not come
        return None if found is None else Artifact(kind, artifact_id, found.path,
                                                   found.manifest, cached=True)

    def _checked(self, kind: str, artifact_id: str) -> Artifact | ArtifactCorruptedError | None:
        """find() and check(), with damage returned (to broadcast), not raised."""
        try:
            found = self.find(kind, artifact_id)
            if found is not None:
                self.check(found)
            return found
        except ArtifactCorruptedError as err:
            return err

    def get(self, ref: str, kind: str | None = None, verify: bool = True) -> Artifact:
        """The artifact whose id is (or starts with) `ref`; verified, of `kind` if given."""
        ref = ref.strip().lower()
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise ConfigError(f"{ref!r} is not an artifact id",
                              "ids are hex strings (at least 4 characters); "
                              "`lpld report lineage` lists them")
        matches = [a for a in self.list() if a.id.startswith(ref)]
        if not matches:
            damaged = [p for p in self._folders() if p.name.startswith(ref)]
            if damaged:
                _, problem = self._load(damaged[0].parent.name, damaged[0])
                raise ArtifactCorruptedError(damaged[0].name, str(problem))
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

    # ----------------------------------------------------------------- integrity
    def verify(self, artifact: Artifact) -> None:
        """Re-hash the payload against the manifest; raise ArtifactCorruptedError on mismatch."""
        problems = _payload_problems(artifact, rehash=True)
        if problems:
            raise ArtifactCorruptedError(artifact.id, problems[0][0], detail=problems[0][1])

    def check(self, artifact: Artifact) -> None:
        """verify() for a cache hit: re-hash up to REHASH_BYTES, else file list and sizes."""
        total = sum(int(meta["bytes"]) for meta in artifact.manifest["files"].values())
        rehash = total <= REHASH_BYTES
        if not rehash:
            warn(f"cached {artifact.kind} {artifact.short} holds {total / 2**30:.1f} GiB: "
                 "checked its file list and sizes, not its hashes (`lpld verify "
                 f"{artifact.short}` re-hashes it)", label="Note")
        problems = _payload_problems(artifact, rehash=rehash)
        if problems:
            raise ArtifactCorruptedError(artifact.id, problems[0][0], detail=problems[0][1])

    def _folders(self) -> list[Path]:
        return sorted(p for k in KINDS if (self.objects / k).is_dir()
                      for p in (self.objects / k).iterdir())

    def audit(self, refs: list[str] | None = None) -> tuple[list[Artifact], list[Damage]]:
        """Check every entry under objects/ (or the artifacts `refs` name), re-hashing payloads.

        Returns the sound artifacts and one Damage per damaged folder or stray entry.
        """
        if refs:
            paths = []
            for ref in refs:
                artifact = self.get(ref, verify=False)
                paths.append(artifact.path)
        else:
            paths = []
            stray: list[Damage] = []
            for entry in sorted(self.objects.iterdir()) if self.objects.is_dir() else []:
                if entry.name not in KINDS or not entry.is_dir():
                    stray.append(Damage(_rel(self.objects, entry), "not an artifact kind folder"))
                    continue
                paths += sorted(entry.iterdir())
        sound: list[Artifact] = []
        damaged: list[Damage] = [] if refs else stray
        for path in paths:
            where = _rel(self.objects, path)
            if not path.is_dir():
                damaged.append(Damage(where, "not an artifact folder"))
                continue
            artifact, problem = self._load(path.parent.name, path)
            if artifact is None:
                damaged.append(Damage(where, str(problem), MANIFEST))
                continue
            problems = _payload_problems(artifact, rehash=True)
            if problems:
                damaged.append(Damage(where, "; ".join(f"{f}: {why}" for f, why in problems),
                                      problems[0][0]))
            else:
                sound.append(artifact)
        return sound, damaged

    # ------------------------------------------------------------------- build
    @contextlib.contextmanager
    def _lock(self, artifact_id: str) -> Iterator[Callable[[], None]]:
        """An exclusive per-id lock, its file removed on release (or earlier: the holder may
        call what this yields once its artifact is promoted, so a kill -9 while reporting
        leaves no lock file behind).

        Removing a lock file while others wait on it is safe because a waiter that gets
        the lock checks that the path still names the file it locked, and retries if not;
        the holder removes the path only while it still names its own file.
        """
        self.staging.mkdir(parents=True, exist_ok=True)
        path = self.staging / f"{artifact_id}.lock"
        while True:
            handle = open(path, "a")  # noqa: SIM115 - closed below or after the yield
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:  # `lpld gc` or a finished holder may have unlinked it: lock the live one
                if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()

        def remove_file() -> None:
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                    path.unlink()

        try:
            yield remove_file
        finally:
            remove_file()
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

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

        A cache hit writes nothing (a read-only store serves it); an OS error while
        writing (disk full, permission denied, read-only) becomes StoreWriteError, with
        a resumable stage's staging kept and any other removed.
        """
        w = dist.world()
        artifact_id = self.artifact_id(kind, config, parents)
        if not force and not w.distributed and (
                hit := self.cached(kind, config, parents)) is not None:
            return hit  # before the lock: a read-only store serves cache hits
        work = self.staging / artifact_id
        try:
            return self._produce(kind, artifact_id, config, parents, build, force, resumable,
                                 selectors, w)
        except OSError as exc:
            kept = resumable and work.is_dir()
            written = 0
            with contextlib.suppress(OSError):
                written = folder_bytes(work)
            if not kept and work.exists():
                with contextlib.suppress(OSError):
                    _rmtree(work)
            raise StoreWriteError(
                f"cannot write {kind} {artifact_id[:12]}: "
                f"{os_error_message(exc, work, written)}",
                (f"its staging is kept in {work}: run the same command again to resume"
                 if kept else "nothing was kept") + "; free space or fix permissions, "
                "or pick another store with --store") from None

    def _produce(self, kind: str, artifact_id: str, config: dict[str, Any],
                 parents: list[str], build: Callable[[Staging], dict[str, Any]], force: bool,
                 resumable: bool, selectors: dict[str, Any] | None,
                 w: dist.World) -> Artifact:
        dist.agree(artifact_id, "the artifact id (config and parents)", w)
        with self._lock(artifact_id) if w.main else contextlib.nullcontext(
                lambda: None) as remove_lock_file:
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
                kill_point("store.staged")
                manifest = self._promote(kind, artifact_id, config, parents, staging, metrics)
                remove_lock_file()
                kill_point("store.promoted")
            manifest = dist.broadcast(manifest, w)
            return Artifact(kind, artifact_id, self.objects / kind / artifact_id, manifest,
                            cached=False)

    def _decide(self, kind: str, artifact_id: str, force: bool, resumable: bool
                ) -> dict[str, Any]:
        """Cached, resumed or fresh (under the lock); a fresh or resumed staging folder."""
        self._recover_interrupted_force(kind, artifact_id)
        found = None if force else self.find(kind, artifact_id)
        if found is not None:
            self.check(found)  # damaged: refused (a --force rebuild replaces it)
            return {"cached": True}
        work = self.staging / artifact_id
        resumed = work.is_dir() and resumable and not force
        if work.exists() and not resumed:
            _rmtree(work)
        if resumed and (work / MANIFEST).exists():
            # killed while promoting: the build resumes as if before it (a payload it can
            # write again, no manifest that would outlive a changed payload)
            (work / MANIFEST).unlink()
            for path in [work, *_walk(work)]:
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
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
            "host": host_facts(), "files": _hash_tree(work),
        }
        write_atomic(work / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        for path in _walk(work):
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        (work / MANIFEST).chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        kill_point("store.manifest")
        final = self.objects / kind / artifact_id
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # --force (or a damaged folder): swap the old one out, then drop it
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


@dataclass(frozen=True)
class Damage:
    """One damaged entry under objects/: its path relative to objects/, what is wrong, and
    the first damaged file (manifest.json for manifest damage, "" for a stray entry)."""

    path: str
    problem: str
    file: str = ""

    def error(self) -> ArtifactCorruptedError:
        """The DESIGN §2 error: `artifact ID is corrupted: FILE`."""
        name = self.path.rsplit("/", 1)[-1]
        if not self.file:
            return ArtifactCorruptedError(name, f"objects/{self.path} is not an artifact")
        return ArtifactCorruptedError(name, self.file, detail=self.problem)


# The manifest keys every reader relies on, with their JSON types.
_MANIFEST_KEYS: dict[str, type | tuple[type, ...]] = {
    "kind": str, "id": str, "config": dict, "parents": list, "files": dict, "metrics": dict,
    "created": (int, float)}


def _manifest_problem(manifest: Any, kind: str, folder: str) -> str | None:
    """What is wrong with a parsed manifest in objects/<kind>/<folder>/, or None."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    for key, types in _MANIFEST_KEYS.items():
        if key not in manifest:
            return f"key {key!r} is missing"
        if not isinstance(manifest[key], types) or isinstance(manifest[key], bool):
            return f"key {key!r} has the wrong type"
    if manifest["kind"] != kind:
        return f"kind {manifest['kind']!r} in a {kind} folder"
    if manifest["id"] != folder:
        return f"id {manifest['id'][:12]}… differs from its folder name"
    if not all(isinstance(p, str) for p in manifest["parents"]):
        return "parents are not ids"
    for rel, meta in manifest["files"].items():
        if (not isinstance(meta, dict) or not isinstance(meta.get("bytes"), int)
                or not isinstance(meta.get("sha256"), str) or rel.startswith("/")
                or ".." in Path(rel).parts):
            return f"file entry {rel!r} is malformed"
    try:
        expected = Store.artifact_id(kind, manifest["config"], manifest["parents"])
    except ValueError:
        return "config is not canonical JSON"
    if expected != folder:
        return "id is not the hash of its kind, config and parents"
    return None


def _payload_problems(artifact: Artifact, rehash: bool) -> list[tuple[str, str]]:
    """(file, problem) for every payload file that is missing, resized, changed or extra."""
    problems = []
    files = artifact.manifest["files"]
    for rel, meta in sorted(files.items()):
        path = artifact.path / rel
        if not path.is_file():
            problems.append((rel, "missing"))
        elif path.stat().st_size != meta["bytes"]:
            problems.append((rel, f"{path.stat().st_size} bytes, manifest says {meta['bytes']}"))
        elif rehash:
            try:
                if sha256_file(path) != meta["sha256"]:
                    problems.append((rel, "sha256 mismatch"))
            except OSError as exc:
                problems.append((rel, f"unreadable ({exc.strerror})"))
    extra = {p.relative_to(artifact.path).as_posix() for p in _walk(artifact.path)} - set(files)
    problems += [(rel, "not in the manifest") for rel in sorted(extra)]
    return problems


def _is_store(folder: Path) -> bool:
    """A folder holding objects/ with only kind folders in it, and staging/ or a kind folder."""
    objects = folder / "objects"
    if not objects.is_dir():
        return False
    names = {p.name for p in objects.iterdir()}
    return names <= set(KINDS) and (bool(names) or (folder / "staging").is_dir())


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor()


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def host_facts() -> dict[str, Any]:
    """What made an artifact: software versions, device and threads (never hashed)."""
    import platform

    facts: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                             "machine": platform.machine(), "cpu": _cpu_model(),
                             "cpus": os.cpu_count(), "lpld": __version__}
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return facts
    facts.update(torch=torch.__version__, threads=torch.get_num_threads(),
                 deterministic=torch.are_deterministic_algorithms_enabled(),
                 cuda=torch.version.cuda if torch.cuda.is_available() else None)
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def _walk(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p != root / MANIFEST)


def _hash_tree(root: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in _walk(root)}


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `path` whole or not at all: a temp file beside it (named per process, so two
    writers never share one), then a rename over it. Serialise before calling: a full disk
    then raises OSError here, never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
