"""The artifact store: identity, caching, promotion, --force, locks, verification."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


def test_a_staging_killed_while_promoting_resumes_writable_without_its_manifest(
        tmp_path: Path) -> None:
    """kill -9 after the manifest was written and the payload made read-only (the
    `store.manifest` kill point): the resumed build can rewrite its files."""
    store = Store(tmp_path)
    artifact_id = Store.artifact_id("images", {"k": 6}, [])
    work = tmp_path / "staging" / artifact_id
    (work / "sub").mkdir(parents=True)
    for path in (work / "sub" / "a.txt", work / "manifest.json"):
        path.write_text("{}")
        path.chmod(0o444)

    def resume(staging) -> dict:
        assert staging.resumed
        assert not (staging.path / "manifest.json").exists()
        assert os.stat(staging.path / "sub" / "a.txt").st_mode & 0o200
        (staging.path / "sub" / "a.txt").write_text("again")
        return {}

    artifact = store.produce("images", {"k": 6}, [], resume, resumable=True)
    assert set(artifact.manifest["files"]) == {"sub/a.txt"}
    store.verify(artifact)


def test_the_lock_file_goes_as_soon_as_the_artifact_is_promoted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill -9 while reporting (after promotion) must leave no lock file behind."""
    from lpld_cli.storage import store as store_module

    seen: dict[str, bool] = {}
    artifact_id = Store.artifact_id("teacher", {"k": 7}, [])
    lock = tmp_path / "staging" / f"{artifact_id}.lock"
    monkeypatch.setattr(store_module, "kill_point",
                        lambda name, step=None: seen.setdefault(name, lock.exists()))
    Store(tmp_path).produce("teacher", {"k": 7}, [], _writer("x"))
    assert seen == {"store.staged": True, "store.manifest": True, "store.promoted": False}
    assert not lock.exists()


@pytest.mark.parametrize(("wanted", "killed"), [("", False), ("p", True), ("p:3", True),
                                                 ("p:2", False), ("q", False)])
def test_a_kill_point_kills_only_where_lpld_test_kill_at_says(wanted: str,
                                                             killed: bool) -> None:
    code = "from lpld_cli.faults import kill_point\nkill_point('p', 3)\nprint('alive')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "LPLD_TEST_KILL_AT": wanted}, timeout=60)
    assert proc.returncode == (-signal.SIGKILL if killed else 0), proc.stderr
    assert (proc.stdout == "alive\n") != killed


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
