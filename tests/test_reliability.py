"""Reliability suite (slow; issue 16 deliverable 7): kill -9 in every stage, then rerun: no partial
or damaged artifact and no held lock after any kill, and the finished artifact byte-equal to an
uninterrupted run's; concurrent identical and different commands; a real full disk.

Recover and relabel (long, resumable) are killed five times in a row at seeded random points of
their progress: once right after the first class (recover) or shard (relabel) is saved, then at
random counts of saved classes or shards. Squeeze, prune and train finish too
fast for random kills to land, so they kill themselves at named points (`LPLD_TEST_KILL_AT`,
lpld_cli/faults.py): mid-work, between a finished staging and its promotion, and after
promotion; every such run must have reached its point. Each stage works in one store throughout
(resuming or restarting its staging), then its payload files are compared with a reference run
in a separate store. Commands are real subprocesses (`python -m lpld_cli`).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lpld_cli.faults import ENV
from lpld_cli.relabel import DONE_DIR, RelabelConfig, relabel
from lpld_cli.storage.store import Store
from tests.conftest import make_real_images, needs_fmnist, run_lpld

pytestmark = [pytest.mark.slow, needs_fmnist]

KILLS = 5
STAGES: dict[str, list[str]] = {
    "squeeze": ["squeeze", "--width", "8", "--depth", "2", "--teacher-epochs", "2",
                "--train-subset", "1000", "--batch-size", "64"],
    "recover": ["recover", "--ipc", "2", "--iterations", "40", "--classes-per-step", "1"],
    "relabel": ["relabel", "--epochs", "120", "--batch-size", "10", "--rows-per-chunk", "4",
                "--rows-per-shard", "8", "--seed", "1"],
    "prune": ["prune", "--ratio", "2x", "--metric", "confidence"],
    "train": ["train", "--epochs", "8", "--width", "16", "--eval-every", "0"],
}
KIND = {"squeeze": "teacher", "recover": "images", "relabel": "labels", "prune": "labels",
        "train": "student"}


def _cmd(args: list[str], root: Path) -> list[str]:
    return [sys.executable, "-m", "lpld_cli", *args, "--json", "--store", str(root)]


def _env() -> dict[str, str]:
    # a train checkpoint after every epoch: the kill points train.checkpoint:N need one
    return {k: v for k, v in os.environ.items() if k != "LPLD_DEBUG"} | {
        "LPLD_CHECKPOINT_SECONDS": "0"}


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory, teacher_store: Store) -> Path:
    root = tmp_path_factory.mktemp("reliability") / "base"
    shutil.copytree(teacher_store.root / "objects", root / "objects")
    store = Store(root)
    images = make_real_images(store, ipc=2)
    relabel(store, RelabelConfig(epochs=30, batch_size=10), images, store.newest("teacher"))
    return root


def _files(root: Path, kind: str, artifact_id: str) -> dict:
    return json.loads((root / "objects" / kind / artifact_id / "manifest.json").read_text())[
        "files"]


def _artifact_ids(root: Path, kind: str) -> set[str]:
    folder = root / "objects" / kind
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _reference(base_store: Path, tmp_path: Path, stage: str) -> tuple[Path, str]:
    """An uninterrupted run in a copy of the base store: its root and the new artifact's id."""
    reference = tmp_path / "reference"
    shutil.copytree(base_store, reference)
    before = _artifact_ids(reference, KIND[stage])
    done = subprocess.run(_cmd(STAGES[stage], reference), capture_output=True, text=True,
                          env=_env(), timeout=900)
    assert done.returncode == 0, done.stderr
    artifact_id = json.loads(done.stdout)["artifact"]["id"]
    assert artifact_id not in before
    return reference, artifact_id


def _assert_whole_or_nothing(root: Path, kind: str, artifact_id: str) -> None:
    """After a kill: nothing under objects/ is damaged, and no lock is left held."""
    sound, damaged = Store(root).audit()
    assert not damaged, [d.error() for d in damaged]
    assert artifact_id not in _artifact_ids(root, kind) or artifact_id in {a.id for a in sound}
    for lock in (root / "staging").glob("*.lock"):  # a dead holder's lock must not block
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _rerun_equals_reference(killed: Path, reference: Path, stage: str,
                            artifact_id: str) -> None:
    kind = KIND[stage]
    resumed = subprocess.run(_cmd(STAGES[stage], killed), capture_output=True, text=True,
                             env=_env(), timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["artifact"]["id"] == artifact_id
    assert _files(killed, kind, artifact_id) == _files(reference, kind, artifact_id)
    assert not list((killed / "staging").glob("*.lock"))
    assert run_lpld("verify", store=killed).returncode == 0


# The resumable stages' saved work in staging, how much a whole run saves, and below which
# count the kills are drawn: recover's class folders (IPC2 × 10 classes, saved one by one),
# relabel's written-shard markers (120 epochs × 2 rows of 10 images = 240 rows in 30 shards
# of 8; its writer thread can finish the last shards in a burst, so it is killed in the first
# half of its work)
PROGRESS: dict[str, tuple[str, int, int]] = {"recover": ("*/train/*", 10, 10),
                                             "relabel": (f"*/{DONE_DIR}/*.done", 30, 15)}


def _saved(staging: Path, pattern: str) -> int:
    return len([p for p in staging.glob(pattern) if not p.name.startswith(".")])


@pytest.mark.parametrize("stage", ["recover", "relabel"])
def test_kill_minus_9_then_resume_equals_an_uninterrupted_run(
        base_store: Path, tmp_path: Path, stage: str) -> None:
    """The resumable stages, each killed five times by its progress, not by the clock (a
    resumed run has less left to do, so a time drawn from a whole run misses it): once right
    after its first unit of work is saved, then at seeded random counts of saved units."""
    args, kind = STAGES[stage], KIND[stage]
    reference, artifact_id = _reference(base_store, tmp_path, stage)
    killed = tmp_path / "killed"
    shutil.copytree(base_store, killed)
    rng = random.Random(f"{stage}-kills")
    pattern, total, below = PROGRESS[stage]
    marks = [1, *sorted(rng.sample(range(2, below), KILLS - 1))]
    kills = 0
    for attempt in range(KILLS):
        proc = subprocess.Popen(_cmd(args, killed), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=_env())
        deadline = time.monotonic() + 600
        while (time.monotonic() < deadline and proc.poll() is None
               and _saved(killed / "staging", pattern) < marks[attempt]):
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        _assert_whole_or_nothing(killed, kind, artifact_id)
        assert _saved(killed / "staging", pattern) < total, "the run finished before its kill"
    assert kills == KILLS, f"only {kills} of {KILLS} runs were still running when killed"
    _rerun_equals_reference(killed, reference, stage, artifact_id)


# Named kill points (lpld_cli/faults.py) for the short stages, in order, one run each: a kill
# at a random time mostly misses a run of a few seconds. Each stage is killed mid-work and
# between a finished staging and its promotion (the store.* points are the same code for
# every stage: prune, the cheapest, takes all of them); "store.promoted" comes last, since
# after it every run is a cache hit. Train's checkpoints come after its store points, so
# the artifact compared is the one resumed twice (epochs 3 and 6), not a fresh run.
# Five kills per stage; prune's first point twice (a restarted run killed again).
KILL_POINTS: dict[str, list[str]] = {
    "squeeze": ["squeeze.epoch:1", "squeeze.epoch:2", "store.staged", "store.manifest",
                "store.promoted"],
    "prune": ["prune.copy", "prune.copy", "store.staged", "store.manifest", "store.promoted"],
    "train": ["store.staged", "store.manifest", "train.checkpoint:3", "train.checkpoint:6",
              "store.promoted"],
}
# what a run killed at a point must say on stderr: it resumed (not restarted) the staging
RESUMED_FROM = {"train.checkpoint:6": "resuming the student from epoch 3/8",
                "store.promoted": "resuming the student from epoch 6/8"}


@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_kill_minus_9_at_named_points_then_rerun_equals_an_uninterrupted_run(
        base_store: Path, tmp_path: Path, stage: str) -> None:
    kind = KIND[stage]
    reference, artifact_id = _reference(base_store, tmp_path, stage)
    killed = tmp_path / "killed"
    shutil.copytree(base_store, killed)
    for point in KILL_POINTS[stage]:
        proc = subprocess.run(_cmd(STAGES[stage], killed), capture_output=True, text=True,
                              env=_env() | {ENV: point}, timeout=900)
        assert proc.returncode == -signal.SIGKILL, f"{point} never reached: {proc.stderr}"
        if stage == "train" and point in RESUMED_FROM:
            assert RESUMED_FROM[point] in proc.stderr, proc.stderr
        _assert_whole_or_nothing(killed, kind, artifact_id)
        promoted = artifact_id in _artifact_ids(killed, kind)
        assert promoted == (point == "store.promoted"), point
        if not promoted:  # the interrupted work is in staging, never under objects/
            assert (killed / "staging" / artifact_id).is_dir(), point
    _rerun_equals_reference(killed, reference, stage, artifact_id)


def test_concurrent_identical_commands_build_one_artifact(base_store: Path,
                                                          tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(base_store, root)
    args = STAGES["relabel"]
    procs = [subprocess.Popen(_cmd(args, root), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env()) for _ in range(3)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    results = [json.loads(o[0]) for o in outs]
    assert len({r["artifact"]["id"] for r in results}) == 1
    assert sorted(r["artifact"]["cached"] for r in results) == [False, True, True]
    assert not list((root / "staging").glob("*.lock"))
    assert run_lpld("verify", store=root).returncode == 0


def test_concurrent_different_commands_all_succeed(base_store: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(base_store, root)
    commands = [STAGES["recover"], STAGES["relabel"], STAGES["train"],
                STAGES["relabel"][:-1] + ["2"]]
    procs = [subprocess.Popen(_cmd(args, root), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env()) for args in commands]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert len({json.loads(o[0])["artifact"]["id"] for o in outs}) == len(commands)
    assert run_lpld("verify", store=root).returncode == 0


def test_a_real_full_disk_is_one_error_line(base_store: Path, tmp_path: Path) -> None:
    """A 1 MiB tmpfs (root only): relabel runs out of space mid-run."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                            str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (the in-process ENOSPC tests still run)")
    try:
        root = mount / "store"
        (root / "objects").mkdir(parents=True)
        for kind in ("teacher", "images"):
            shutil.copytree(base_store / "objects" / kind, root / "objects" / kind)
        proc = run_lpld("relabel", "--epochs", "3000", "--batch-size", "10", "--codec", "none",
                        "--logits-dtype", "float32", store=root)
        assert proc.returncode == 1, proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error")]
        assert len(errors) == 1 and "No space left on device" in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr and "MiB free" in errors[0]
        assert not (root / "objects" / "labels").exists() or not any(
            (root / "objects" / "labels").iterdir())
        assert not list((root / "staging").glob("*.lock"))
        assert run_lpld("verify", store=root).returncode == 0
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
