"""The artifact store: identity, caching, promotion, --force, locks, verification."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from lpld_cli.errors import ArtifactCorruptedError, ArtifactNotFoundError, ConfigError
from lpld_cli.storage.store import Store


def _writer(content: str, calls: list[int] | None = None, delay: float = 0.0):
    def build(staging) -> dict:
        if calls is not None:
            calls.append(1)
        time.sleep(delay)
        (staging.path / "sub").mkdir()
        (staging.path / "sub" / "a.txt").write_text(content)
        (staging.path / "b.bin").write_bytes(content.encode() * 3)
        return {"size": len(content)}

    return build


def test_id_is_input_addressed() -> None:
    a = Store.artifact_id("teacher", {"x": 1, "y": [1, 2]}, [])
    assert a == Store.artifact_id("teacher", {"y": [1, 2], "x": 1}, [])
    assert a != Store.artifact_id("teacher", {"x": 2, "y": [1, 2]}, [])
    assert a != Store.artifact_id("images", {"x": 1, "y": [1, 2]}, [])
    assert a != Store.artifact_id("teacher", {"x": 1, "y": [1, 2]}, ["p"])
    assert len(a) == 64


def test_produce_promotes_hashes_and_caches(tmp_path: Path) -> None:
    store = Store(tmp_path)
    calls: list[int] = []
    first = store.produce("teacher", {"k": 1}, [], _writer("hello", calls),
                          selectors={"dataset": "d"})
    assert not first.cached
    assert first.path == tmp_path / "objects" / "teacher" / first.id
    assert first.metrics == {"size": 5}
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"sub/a.txt", "b.bin"}
    assert manifest["files"]["b.bin"]["bytes"] == 15
    assert manifest["kind"] == "teacher" and manifest["parents"] == []
    assert not os.access(first.path / "b.bin", os.W_OK) or os.geteuid() == 0
    assert (os.stat(first.path / "b.bin").st_mode & 0o222) == 0  # read-only
    assert not (tmp_path / "staging" / first.id).exists()

    second = store.produce("teacher", {"k": 1}, [], _writer("other", calls))
    assert second.cached and second.id == first.id and len(calls) == 1
    assert store.newest("teacher", dataset="d").id == first.id
    with pytest.raises(ArtifactNotFoundError, match="lpld squeeze"):
        store.newest("teacher", dataset="nope")


def test_force_replaces_atomically(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = store.produce("images", {"k": 1}, [], _writer("one"))
    forced = store.produce("images", {"k": 1}, [], _writer("two"), force=True)
    assert forced.id == first.id and not forced.cached
    assert (forced.path / "sub" / "a.txt").read_text() == "two"
    assert len(list((tmp_path / "objects" / "images").iterdir())) == 1
    store.verify(forced)


def test_failed_build_leaves_no_artifact(tmp_path: Path) -> None:
    store = Store(tmp_path)

    def broken(staging) -> dict:
        (staging.path / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.produce("teacher", {"k": 2}, [], broken)
    assert store.list() == []
    # The next run cleans the leftover and succeeds.
    good = store.produce("teacher", {"k": 2}, [], _writer("ok"))
    assert set(good.manifest["files"]) == {"sub/a.txt", "b.bin"}


def test_resumable_staging_is_handed_back(tmp_path: Path) -> None:
    store = Store(tmp_path)
    seen: list[bool] = []

    def interrupted(staging) -> dict:
        seen.append(staging.resumed)
        (staging.path / "done-part").write_text("1")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.produce("images", {"k": 3}, [], interrupted, resumable=True)

    def resume(staging) -> dict:
        seen.append(staging.resumed)
        assert (staging.path / "done-part").read_text() == "1"
        return {}

    store.produce("images", {"k": 3}, [], resume, resumable=True)
    assert seen == [False, True]


def test_two_identical_builds_at_once_give_one_artifact(tmp_path: Path) -> None:
    calls: list[int] = []
    results = []

    def run() -> None:
        results.append(Store(tmp_path).produce("teacher", {"k": 4}, [],
                                               _writer("x", calls, delay=0.5)))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert {r.id for r in results} == {results[0].id}
    assert sorted(r.cached for r in results) == [False, True]


def test_verify_names_the_corrupted_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    artifact = store.produce("teacher", {"k": 5}, [], _writer("payload"))
    target = artifact.path / "sub" / "a.txt"
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[0] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptedError) as err:
        store.verify(artifact)
    assert err.value.file == "sub/a.txt" and artifact.id in err.value.message
    with pytest.raises(ArtifactCorruptedError, match="sub/a.txt"):
        store.get(artifact.id[:10], kind="teacher")
    with pytest.raises(ArtifactCorruptedError, match="sub/a.txt"):
        store.newest("teacher")


def test_get_by_prefix_and_kind(tmp_path: Path) -> None:
    store = Store(tmp_path)
    artifact = store.produce("teacher", {"k": 6}, [], _writer("p"))
    assert store.get(artifact.id[:8]).id == artifact.id
    with pytest.raises(ConfigError, match="is a teacher, not a images"):
        store.get(artifact.id, kind="images")
    with pytest.raises(ArtifactNotFoundError):
        store.get("abcdef123")
    with pytest.raises(ConfigError, match="not an artifact id"):
        store.get("xyz!")


def test_interrupted_force_is_restored(tmp_path: Path) -> None:
    store = Store(tmp_path)
    artifact = store.produce("teacher", {"k": 7}, [], _writer("p"))
    trash = tmp_path / "staging" / f".trash-{artifact.id}"
    os.rename(artifact.path, trash)  # as if killed between --force's two renames
    again = store.produce("teacher", {"k": 7}, [], _writer("other"))
    assert again.cached and (again.path / "sub" / "a.txt").read_text() == "p"
    assert not trash.exists()
