"""OS errors are errors: a full disk, a permission denied and a read-only store give one
`Error:` line naming the path, keep resumable staging (or remove it), never a traceback;
a read-only store still serves cache hits, verify and reports (issue 16 deliverable 3).

The faults are injected in-process: every open-for-writing, mkdir, rename, replace and
unlink under the store goes through `Fault`, which raises the chosen errno.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.errors import StoreWriteError
from lpld_cli.storage.store import Store
from tests.conftest import make_real_images, needs_fmnist

_WRITE_MODES = ("w", "a", "x", "+")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class Fault:
    """Raise `code` for writes under `root` once `allow` write opens have gone through.

    `everything`: mkdir/rename/replace/unlink fail too (a read-only file system); else only
    opens for writing do (a full disk: folders and renames cost no blocks here).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path, code: int,
                 allow: int = 0, everything: bool = False, skip_locks: bool = True) -> None:
        self.root = str(Path(root).resolve())
        self.code = code
        self.allow = allow
        self.everything = everything
        self.skip_locks = skip_locks
        self.raised = 0
        real_open, real_os_open = io.open, os.open

        def fake_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and any(m in mode for m in _WRITE_MODES):
                self._maybe_fail(file)
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(path, flags, *args, **kwargs):
            if flags & _WRITE_FLAGS:
                self._maybe_fail(path)
            return real_os_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
        if everything:
            for name in ("mkdir", "rename", "replace", "unlink", "rmdir", "chmod"):
                monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, func: Callable) -> Callable:
        def wrapped(path, *args, **kwargs):
            self._fail_under_root(path, count=False)
            return func(path, *args, **kwargs)

        return wrapped

    def _maybe_fail(self, path) -> None:
        if self.skip_locks and str(path).endswith(".lock") and not self.everything:
            return
        self._fail_under_root(path, count=True)

    def _fail_under_root(self, path, count: bool) -> None:
        if isinstance(path, int):
            return
        full = os.path.abspath(os.fspath(path))
        if not full.startswith(self.root):
            return
        if count and self.allow > 0:
            self.allow -= 1
            return
        self.raised += 1
        raise OSError(self.code, os.strerror(self.code), os.fspath(path))


def _writer(parts: int) -> Callable:
    def build(staging) -> dict:
        for i in range(parts):
            if not (staging.path / f"part{i}").exists():
                (staging.path / f"part{i}").write_bytes(bytes(1000))
        return {"parts": parts}

    return build


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT])
@pytest.mark.parametrize("resumable", [False, True])
def test_produce_turns_os_errors_into_one_clean_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, resumable: bool) -> None:
    store = Store(tmp_path / "store")
    with monkeypatch.context() as patch:
        Fault(patch, store.root / "staging", code, allow=1)
        with pytest.raises(StoreWriteError) as err:
            store.produce("images", {"k": 1}, [], _writer(3), resumable=resumable)
    message = err.value.message
    assert os.strerror(code) in message and str(store.staging) in message
    assert "\n" not in message
    if code in (errno.ENOSPC, errno.EDQUOT):  # part0's 1000 bytes were written first
        assert re.search(r"\(\d+\.\d MiB free on that file system; it needs more than "
                         r"\d+\.\d [KMG]iB: 1000 B were written before the disk filled\)$",
                         message), message
    work = store.staging / Store.artifact_id("images", {"k": 1}, [])
    assert work.is_dir() == resumable  # kept to resume, or removed
    if resumable:
        assert (work / "part0").is_file() and "resume" in str(err.value.hint)
    assert not list(store.staging.glob("*.lock")) and store.list() == []
    again = store.produce("images", {"k": 1}, [], _writer(3), resumable=resumable)
    assert not again.cached
    store.verify(again)


def test_a_read_only_store_serves_cache_hits_and_refuses_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "store")
    made = store.produce("images", {"k": 1}, [], _writer(2))
    with monkeypatch.context() as patch:
        fault = Fault(patch, store.root, errno.EROFS, everything=True)
        hit = store.produce("images", {"k": 1}, [], _writer(2))
        assert hit.cached and hit.id == made.id and fault.raised == 0
        with pytest.raises(StoreWriteError, match="Read-only file system"):
            store.produce("images", {"k": 2}, [], _writer(2))
    assert store.list() == [made] or [a.id for a in store.list()] == [made.id]


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory: pytest.TempPathFactory, teacher_store: Store) -> Path:
    """A store with a teacher, images, labels, a pruned store and a student (tiny)."""
    root = tmp_path_factory.mktemp("oserr") / "store"
    shutil.copytree(teacher_store.root / "objects", root / "objects")
    store = Store(root)
    make_real_images(store, ipc=2)
    for args in (RELABEL, PRUNE, TRAIN):
        result = CliRunner().invoke(app, [*args, "--store", str(root)])
        assert result.exit_code == 0, result.output
    return root


RECOVER = ["recover", "--ipc", "1", "--iterations", "2", "--classes-per-step", "10"]
RELABEL = ["relabel", "--epochs", "2", "--batch-size", "10"]
PRUNE = ["prune", "--ratio", "2x"]
TRAIN = ["train", "--epochs", "2", "--width", "8", "--depth", "2", "--eval-every", "0"]
SQUEEZE = ["squeeze", "--width", "8", "--depth", "2", "--teacher-epochs", "1",
           "--train-subset", "300"]


def _one_error(result) -> str:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@needs_fmnist
@pytest.mark.parametrize("command", [RECOVER, RELABEL + ["--seed", "1"],
                                     PRUNE + ["--metric", "first"], TRAIN + ["--seed", "1"],
                                     SQUEEZE],
                         ids=["recover", "relabel", "prune", "train", "squeeze"])
def test_disk_full_in_every_stage_is_one_line_and_resumes(
        pipeline_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        command: list[str]) -> None:
    root = tmp_path / "store"
    shutil.copytree(pipeline_store, root)
    objects_before = sorted(p.name for p in (root / "objects").rglob("*") if p.parent.parent
                            == root / "objects")
    with monkeypatch.context() as patch:
        Fault(patch, root / "staging", errno.ENOSPC, allow=1)
        result = CliRunner().invoke(app, [*command, "--store", str(root)])
    line = _one_error(result)
    assert "No space left on device" in line and str(root / "staging") in line
    assert "MiB free" in line
    assert sorted(p.name for p in (root / "objects").rglob("*")
                  if p.parent.parent == root / "objects") == objects_before
    assert not list((root / "staging").glob("*.lock"))
    again = CliRunner().invoke(app, [*command, "--store", str(root)])
    assert again.exit_code == 0, again.output
    verify = CliRunner().invoke(app, ["verify", "--store", str(root)])
    assert verify.exit_code == 0, verify.output


@needs_fmnist
def test_read_only_store_cache_hits_reports_and_one_line_writes(
        pipeline_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(pipeline_store)
    with monkeypatch.context() as patch:
        fault = Fault(patch, pipeline_store, errno.EROFS, everything=True)
        for command in (RELABEL, PRUNE, TRAIN, ["verify"], ["report", "storage"],
                        ["report", "accuracy"], ["report", "diversity"]):
            result = CliRunner().invoke(app, [*command, "--store", root])
            assert result.exit_code == 0, (command, result.output, result.exception)
            assert "Error" not in result.stderr
        assert fault.raised == 0
        for command in (RECOVER, TRAIN + ["--seed", "3"]):
            line = _one_error(CliRunner().invoke(app, [*command, "--store", root]))
            assert "Read-only file system" in line and root in line
