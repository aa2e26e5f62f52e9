"""A store that never hides damage: verify reports every damaged folder, listings skip them
with a warning, cache hits check the artifact, locks are removed, bad store paths refused."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.errors import ArtifactCorruptedError, ConfigError
from lpld_cli.storage import store as store_module
from lpld_cli.storage.store import Store


def _writer(content: str) -> Callable:
    def build(staging) -> dict:
        (staging.path / "sub").mkdir()
        (staging.path / "sub" / "a.txt").write_text(content)
        (staging.path / "b.bin").write_bytes(content.encode() * 3)
        return {"size": len(content)}

    return build


def _writable(path: Path) -> Path:
    os.chmod(path, 0o644)
    return path


def _flip(path: Path, at: int = 0) -> None:
    data = bytearray(_writable(path).read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(path: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    _writable(path / "manifest.json").write_text(json.dumps(manifest))


def _rename_key(manifest: dict) -> None:
    manifest["kinc"] = manifest.pop("kind")


def _drop_files_key(manifest: dict) -> None:
    del manifest["files"]


def _edit_config(manifest: dict) -> None:
    manifest["config"]["k"] = 999  # the id no longer hashes its inputs


# Each damage: (name, function(artifact path) -> None). One artifact per damage.
DAMAGES: list[tuple[str, Callable[[Path], None]]] = [
    ("manifest flipped byte", lambda p: _flip(p / "manifest.json", 0)),
    ("manifest deleted", lambda p: (p / "manifest.json").unlink()),
    ("manifest renamed key", lambda p: _edit_manifest(p, _rename_key)),
    ("manifest without files", lambda p: _edit_manifest(p, _drop_files_key)),
    ("manifest config edited", lambda p: _edit_manifest(p, _edit_config)),
    ("manifest is a list", lambda p: _writable(p / "manifest.json").write_text("[]")),
    ("payload flipped byte", lambda p: _flip(p / "sub" / "a.txt", 2)),
    ("payload truncated", lambda p: _writable(p / "b.bin").write_bytes(b"x")),
    ("payload deleted", lambda p: (p / "b.bin").unlink()),
    ("extra file", lambda p: (p / "sub" / "extra.txt").write_text("?")),
]


def _damaged_store(root: Path) -> tuple[Store, dict[str, str]]:
    """A store with one sound artifact, one per damage, and a copy under a forged id."""
    store = Store(root)
    store.produce("teacher", {"k": -1}, [], _writer("sound"))
    ids = {}
    for i, (name, damage) in enumerate(DAMAGES):
        artifact = store.produce("images", {"k": i}, [], _writer(f"payload {i}"))
        damage(artifact.path)
        ids[name] = artifact.id
    # A folder copied under a new id with its manifest's id edited to match.
    source = store.produce("labels", {"k": 100}, [], _writer("copied"))
    forged = "ab" * 32
    shutil.copytree(source.path, source.path.parent / forged)
    _edit_manifest(source.path.parent / forged, lambda m: m.update(id=forged))
    ids["forged copy"] = forged
    (store.objects / "images" / "stray.txt").write_text("not an artifact")
    (store.objects / "widgets").mkdir()
    return store, ids


def test_verify_reports_every_damaged_folder_and_exits_1(tmp_path: Path) -> None:
    store, ids = _damaged_store(tmp_path / "s")
    result = CliRunner().invoke(app, ["verify", "--store", str(store.root)])
    assert result.exit_code == 1, result.output
    err = result.stderr
    for name, artifact_id in ids.items():
        assert f"damaged  {'labels' if name == 'forged copy' else 'images'}/{artifact_id}" \
            in err, name
    assert "images/stray.txt" in err and "widgets" in err
    assert "manifest.json is missing" in err and "not valid JSON" in err
    assert "key 'kind' is missing" in err and "not the hash" in err
    assert "sha256 mismatch" in err and "not in the manifest" in err
    assert err.count("Error:") == 1 and "Traceback" not in result.output
    assert "2 artifact(s) verified" in err  # the sound teacher and the copied labels' source

    as_json = CliRunner().invoke(app, ["verify", "--json", "--store", str(store.root)])
    assert as_json.exit_code == 1
    payload = json.loads(as_json.stdout)
    assert len(payload["damaged"]) == len(ids) + 2 and len(payload["verified"]) == 2


def test_listings_skip_damaged_artifacts_with_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, ids = _damaged_store(tmp_path / "s")
    listed = {a.id for a in store.list()}
    manifest_damage = {"manifest flipped byte", "manifest deleted", "manifest renamed key",
                       "manifest without files", "manifest config edited",
                       "manifest is a list", "forged copy"}
    assert not listed & {ids[n] for n in manifest_damage}
    err = capsys.readouterr().err
    assert err.count("Warning: skipping damaged artifact") == len(manifest_damage)
    store.list()  # warned once per store
    assert "Warning" not in capsys.readouterr().err
    report = CliRunner().invoke(app, ["report", "storage", "--store", str(store.root)])
    assert "Traceback" not in report.output and "Warning: skipping" in report.stderr


@pytest.mark.parametrize("name", [n for n, _ in DAMAGES])
def test_a_cache_hit_refuses_a_damaged_artifact(tmp_path: Path, name: str) -> None:
    store = Store(tmp_path)
    damage = dict(DAMAGES)[name]
    artifact = store.produce("images", {"k": 1}, [], _writer("good"))
    damage(artifact.path)
    with pytest.raises(ArtifactCorruptedError) as err:
        store.produce("images", {"k": 1}, [], _writer("good"))
    assert artifact.id in err.value.message and "lpld verify" in str(err.value.hint)
    with pytest.raises(ArtifactCorruptedError):
        store.cached("images", {"k": 1}, [])
    rebuilt = store.produce("images", {"k": 1}, [], _writer("good"), force=True)
    assert not rebuilt.cached
    store.verify(rebuilt)
    assert store.produce("images", {"k": 1}, [], _writer("good")).cached


def test_large_cache_hits_check_sizes_with_a_note(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path)
    artifact = store.produce("images", {"k": 1}, [], _writer("good"))
    monkeypatch.setattr(store_module, "REHASH_BYTES", 4)
    _flip(artifact.path / "b.bin")  # same size: only a re-hash would see it
    assert store.produce("images", {"k": 1}, [], _writer("good")).cached
    assert "checked its file list and sizes, not its hashes" in capsys.readouterr().err
    _writable(artifact.path / "b.bin").write_bytes(b"shorter")
    with pytest.raises(ArtifactCorruptedError, match="b.bin"):
        store.cached("images", {"k": 1}, [])


def test_lock_files_are_removed_when_the_artifact_completes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.produce("images", {"k": 1}, [], _writer("good"))
    def broken(staging) -> dict:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.produce("images", {"k": 2}, [], broken)
    assert not list((tmp_path / "staging").glob("*.lock"))


@pytest.mark.parametrize("make", ["file", "empty", "kind folder", "objects", "not a store"])
def test_store_paths_that_cannot_be_a_store_are_refused(tmp_path: Path, make: str) -> None:
    store = Store(tmp_path / "s")
    store.produce("images", {"k": 1}, [], _writer("good"))
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    path = {"file": str(tmp_path / "file"), "empty": "",
            "kind folder": str(store.objects / "images"), "objects": str(store.objects),
            "not a store": str(tmp_path / "other")}[make]
    before = sorted(p for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["verify", "--store", path])
    assert result.exit_code != 0
    assert result.stderr.count("Error:") == 1 and "Traceback" not in result.output
    assert sorted(p for p in tmp_path.rglob("*")) == before
    with pytest.raises(ConfigError):
        Store(path).check_root(must_exist=True) if path else (_ for _ in ()).throw(
            ConfigError("empty"))


def test_verify_of_a_missing_store_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["verify", "--store", str(tmp_path / "nowhere")])
    assert result.exit_code != 0 and "no lpld store" in result.stderr
    assert not (tmp_path / "nowhere").exists()
