"""Instant cached commands: a request already answered returns its artifact without torch.

An artifact's id comes from its resolved config, which the stage computes (presets,
defaults, data facts) after importing torch. A repeated command needs none of that: the
store keeps, per request, the artifact it made.

    requests/<key>.json     {"kind": …, "artifact": id}

`key` = sha256 of the command name, every option value the user's command line resolved
to, the parent ids it picked, `--device` and the GPUs the machine shows, and a hash of lpld's
own source (any code change, e.g. a preset value, makes every key new, so a stale answer is
never given). A command whose
inputs are files the id hashes (`--weights`, a folder dataset) skips this index: their
content may change under the same path. The artifact found is checked (every payload
file present with its recorded size) before it is returned; anything else falls back to
the normal path, which recomputes the id and checks it as always.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from lpld_cli.errors import ArtifactCorruptedError
from lpld_cli.storage.store import Artifact, Store, canonical_json, write_atomic

FOLDER = "requests"


@lru_cache(maxsize=1)
def code_hash() -> str:
    """sha256 over lpld_cli's Python source files (relative path and bytes, sorted)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def request_key(command: str, options: dict[str, Any], parents: list[str],
                device: str = "auto") -> str:
    """The key of one command line: its resolved options, parents, `--device`, the GPUs this
    machine shows (`auto` and the defaults that follow the device, e.g. relabel's precision
    or recover's units per forward, resolve from them) and lpld's source."""
    # paths as text; NaN/inf (refused later, by the config) as text, so the key is JSON
    clean = {k: (str(v) if isinstance(v, os.PathLike) or (isinstance(v, float)
                                                       and not math.isfinite(v)) else v)
             for k, v in options.items()}
    blob = canonical_json({"command": command, "options": clean, "parents": list(parents),
                           "device": device, "gpus": visible_gpus(), "code": code_hash()})
    return hashlib.sha256(blob.encode()).hexdigest()


def visible_gpus() -> dict[str, Any]:
    """The NVIDIA GPUs the driver lists and the ones CUDA may use, read without torch: a
    store shared by a CPU machine and a GPU node answers each with its own artifacts."""
    listed = Path("/proc/driver/nvidia/gpus")
    count = len(list(listed.iterdir())) if listed.is_dir() else 0
    return {"nvidia": count, "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


def answered(store: Store, key: str) -> Artifact | None:
    """The artifact this request made, if it is still complete; else None."""
    try:
        entry = json.loads((store.root / FOLDER / f"{key}.json").read_text())
        found = store.find(entry["kind"], entry["artifact"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if found is None:
        return None
    try:  # re-hashed as every cache hit is (sizes only above REHASH_BYTES)
        store.check(found)
    except ArtifactCorruptedError:
        return None  # damaged: the normal path reports it
    return Artifact(found.kind, found.id, found.path, found.manifest, cached=True)


def remember(store: Store, key: str, artifact: Artifact) -> None:
    """Record that this request made `artifact` (best effort: a read-only store is fine)."""
    folder = store.root / FOLDER
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{key}.json",
                     json.dumps({"kind": artifact.kind, "artifact": artifact.id}))
