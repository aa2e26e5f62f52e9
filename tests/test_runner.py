"""benchmarks/_runner.py: a phase of stage tasks in spawned workers, its results kept by key,
the same artifacts as the stages called in-process, and a finished student found cached."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks._runner import Runner, run_stage
from lpld_cli.prune import PruneConfig, prune
from lpld_cli.relabel import RelabelConfig, relabel
from lpld_cli.storage.store import Store
from lpld_cli.train import TrainConfig, train
from tests.conftest import make_real_images, needs_fmnist

pytestmark = needs_fmnist


def test_a_phase_in_two_workers_makes_the_in_process_artifacts(store_with_teacher: Store
                                                               ) -> None:
    store = store_with_teacher
    images = make_real_images(store, ipc=2)
    labels = relabel(store, RelabelConfig(epochs=2, batch_size=10), images)
    tasks = {("prune", r): {"stage": "prune", "config": {"ratio": r}, "labels": labels.id}
             for r in (2.0, 4.0)}
    runner = Runner(store.root, "cpu", jobs=2, threads=1)
    runner.phase("prune", tasks, describe=lambda key, res: res["id"][:8])
    assert set(runner.results) == set(tasks)
    for (_, ratio), result in runner.results.items():
        direct = prune(store, PruneConfig(ratio=ratio), labels)  # the oracle: in-process
        assert direct.cached and result["id"] == direct.id and not result["cached"]
        assert result["metrics"]["rows"] == direct.metrics["rows"] == 4 // int(ratio)
    before = dict(runner.results)
    runner.phase("prune", tasks)  # keys already done are not run again
    assert runner.results == before


def test_a_finished_student_is_found_without_training(store_with_teacher: Store) -> None:
    store = store_with_teacher
    images = make_real_images(store, ipc=2)
    labels = relabel(store, RelabelConfig(epochs=2, batch_size=10), images)
    config = {"width": 8, "depth": 2, "epochs": 1, "batch_size": 10}
    task = {"stage": "train", "config": config, "images": images.id, "labels": labels.id,
            "store": str(store.root), "device": "cpu"}
    first = run_stage(task)
    again = run_stage(task)
    assert not first["cached"] and again["cached"] and again["id"] == first["id"]
    student = train(store, TrainConfig(**config), images, labels, None)
    assert student.cached and student.id == first["id"]
    assert again["metrics"]["top1"] == student.metrics["top1"]


def test_an_unknown_stage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown stage 'distil'"):
        run_stage({"stage": "distil", "config": {}, "store": str(tmp_path), "device": "cpu"})


def _stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first, then the parent pid)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (a worker of a worker counts too)."""
    stats = {int(e.name): _stat(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()}
    parents = {p: int(st[1]) for p, st in stats.items() if st}
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"  # a zombie has stopped running


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_sigterm_stops_the_workers_and_leaves_no_artifact(store_with_teacher: Store,
                                                          tmp_path: Path) -> None:
    """A benchmark killed mid-phase (`kill`, preemption) takes its workers with it: they used to
    run their stage on, without a parent, competing with the rerun for the CPU."""
    store = store_with_teacher
    teacher = store.newest("teacher").id
    script = (
        "import sys\n"
        "from benchmarks._runner import Runner\n"
        "tasks = {k: {'stage': 'recover', 'teacher': sys.argv[2],\n"
        "             'config': {'ipc': 1, 'iterations': 1000000, 'seed': k}} for k in (0, 1)}\n"
        "Runner(sys.argv[1], 'cpu', jobs=2, threads=1).phase('recover', tasks)\n")
    root = Path(__file__).resolve().parents[1]
    log = tmp_path / "runner.log"  # a file, not a pipe: reading it never waits on the run
    proc = subprocess.Popen([sys.executable, "-c", script, str(store.root), teacher], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)},
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(_descendants(proc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)  # two workers and the resource tracker
        time.sleep(5)  # the workers are inside their stage
        workers = _descendants(proc.pid)
        assert len(workers) >= 3 and proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(_alive(p) for p in workers), "workers outlived the benchmark"
        assert store.list("images") == []  # neither stage finished: nothing published
    finally:  # a failing run must not leave its workers computing either
        for pid in {*workers, *_descendants(proc.pid)}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
