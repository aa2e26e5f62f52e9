"""`lpld ls / show / rm / gc`: on a store of small hand-made artifacts (no training)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.storage.store import Store

runner = CliRunner()


def _make(store: Store, kind: str, config: dict, parents: list[str], selectors: dict,
          metrics: dict, payload: bytes) -> str:
    def build(staging) -> dict:
        (staging.path / "payload.bin").write_bytes(payload)
        return metrics

    time.sleep(0.01)  # distinct `created` times: newest-first order is defined
    return store.produce(kind, config, parents, build, selectors=selectors).id


@pytest.fixture
def chain(tmp_path: Path) -> dict:
    """teacher → images → labels (float16) → pruned 40x → student; plus a hard-label student."""
    store = Store(tmp_path / "store")
    fm = {"dataset": "fashion-mnist"}
    t = _make(store, "teacher", {"t": 1}, [], {**fm, "model": "convnet"},
              {"top1": 0.91}, b"t" * 1000)
    i = _make(store, "images", {"i": 1}, [t], {**fm, "ipc": 10, "method": "lpld"},
              {"self_top1": 1.0}, b"i" * 2000)
    lab = _make(store, "labels", {"logits_dtype": "float16"}, [i, t],
                {**fm, "ipc": 10, "method": "lpld", "ratio": 1.0}, {"rows": 600},
                b"l" * 3000)
    p = _make(store, "labels", {"ratio": 40.0}, [lab],
              {**fm, "ipc": 10, "method": "lpld", "ratio": 40.0}, {"rows": 15}, b"p" * 400)
    s = _make(store, "student", {"labels": "stored"}, [i, p],
              {**fm, "ipc": 10, "method": "lpld", "ratio": 40.0, "labels": "stored"},
              {"top1": 0.8123}, b"s" * 500)
    h = _make(store, "student", {"labels": "hard"}, [i],
              {**fm, "ipc": 10, "method": "lpld", "ratio": None, "labels": "hard"},
              {"top1": 0.55}, b"h" * 500)
    return {"store": store, "teacher": t, "images": i, "labels": lab, "pruned": p,
            "student": s, "hard": h}


def lpld(store: Store, *args: str):
    return runner.invoke(app, [*args, "--store", str(store.root)])


def _ids(store: Store) -> set[str]:
    return {a.id for a in store.list()}


def test_ls_json_rows_and_columns(chain: dict) -> None:
    result = lpld(chain["store"], "ls", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["id"] for r in rows] == [chain[k] for k in
                                       ("hard", "student", "pruned", "labels", "images",
                                        "teacher")]
    by = {r["id"]: r for r in rows}
    student, pruned, hard = by[chain["student"]], by[chain["pruned"]], by[chain["hard"]]
    assert (student["ratio"], student["top1"], student["ipc"]) == (40.0, 0.8123, 10)
    assert hard["ratio"] == "hard"
    # a pruned store is encoded as its unpruned ancestor
    assert pruned["encoding"] == "float16" and by[chain["labels"]]["encoding"] == "float16"
    manifest = chain["store"].objects / "labels" / chain["pruned"] / "manifest.json"
    assert pruned["bytes"] == 400 + manifest.stat().st_size
    assert by[chain["teacher"]]["top1"] == 0.91 and by[chain["images"]]["top1"] is None


def test_ls_kind_filter_and_table(chain: dict) -> None:
    result = lpld(chain["store"], "ls", "students")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["id", "kind", "dataset", "method", "ipc", "ratio", "encoding",
                                "top-1", "size", "created"]
    assert len(lines) == 3 and all(" student " in line for line in lines[1:])
    assert "0.8123" in result.stdout and "40x" in result.stdout
    bad = lpld(chain["store"], "ls", "bananas")
    assert bad.exit_code == 2 and "Error: unknown kind 'bananas'" in bad.output
    assert "Traceback" not in bad.output


def test_show_lineage_up_and_down(chain: dict) -> None:
    result = lpld(chain["store"], "show", chain["labels"][:8], "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["artifact"]["id"] == chain["labels"]
    assert info["manifest"]["config"] == {"logits_dtype": "float16"}
    assert info["manifest"]["metrics"] == {"rows": 600}
    up = [(r["depth"], r["id"]) for r in info["lineage_up"]]
    assert up[:3] == [(0, chain["labels"]), (1, chain["images"]), (2, chain["teacher"])]
    down = [(r["depth"], r["id"]) for r in info["lineage_down"]]
    assert down == [(1, chain["pruned"]), (2, chain["student"])]
    human = lpld(chain["store"], "show", chain["labels"][:8])
    assert "lineage down" in human.stdout and chain["student"][:12] in human.stdout


def test_rm_refuses_to_orphan_descendants(chain: dict) -> None:
    store = chain["store"]
    before = _ids(store)
    result = lpld(store, "rm", chain["labels"][:10])
    assert result.exit_code == 2
    assert "2 artifact(s) depend on it" in result.output and "--recursive" in result.output
    assert chain["pruned"][:12] in result.output and chain["student"][:12] in result.output
    assert _ids(store) == before


def test_rm_dry_run_removes_nothing(chain: dict) -> None:
    store = chain["store"]
    before = _ids(store)
    result = lpld(store, "rm", chain["images"], "--recursive", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    # everything made from the images, students first, the images last; not the teacher
    assert set(out["removed"]) == before - {chain["teacher"]}
    assert out["removed"][-1] == chain["images"]
    assert out["removed"].index(chain["pruned"]) < out["removed"].index(chain["labels"])
    assert _ids(store) == before


def test_rm_recursive_and_leaf(chain: dict) -> None:
    store = chain["store"]
    leaf = lpld(store, "rm", chain["hard"])
    assert leaf.exit_code == 0, leaf.output
    assert chain["hard"] not in _ids(store)
    result = lpld(store, "rm", chain["labels"], "-r", "--json")
    assert result.exit_code == 0, result.output
    assert _ids(store) == {chain["teacher"], chain["images"]}
    assert json.loads(result.stdout)["bytes"] > 3000 + 400 + 500
    assert not any(p.name.startswith(".rm-") for p in store.staging.iterdir())


def test_rm_missing_id_is_one_line(chain: dict) -> None:
    result = lpld(chain["store"], "rm", "deadbeef")
    assert result.exit_code == 2
    assert result.output.startswith("Error: no artifact deadbeef")
    assert "Traceback" not in result.output


def test_gc_removes_only_what_no_live_process_holds(chain: dict, tmp_path: Path) -> None:
    store = chain["store"]
    staging = store.staging
    dead = staging / ("a" * 64)
    dead.mkdir()
    (dead / "partial.bin").write_bytes(b"x" * 5000)
    (staging / f"{'a' * 64}.lock").touch()
    live = staging / ("b" * 64)
    live.mkdir()
    (live / "partial.bin").write_bytes(b"y" * 7000)
    # a live process holds b's lock (another process: flock is per open file)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1],'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
         str(staging / f"{'b' * 64}.lock")], stdout=subprocess.PIPE, text=True)
    from lpld_cli.storage.requests import remember

    removed = store.get(chain["hard"], verify=False)
    remember(store, "f" * 64, removed)
    remember(store, "e" * 64, store.get(chain["teacher"], verify=False))
    lpld(store, "rm", chain["hard"])  # its request entry is now stale
    try:
        assert holder.stdout.readline().strip() == "locked"
        dry = lpld(store, "gc", "--dry-run", "--json")
        assert dry.exit_code == 0, dry.output
        assert dead.exists()
        result = lpld(store, "gc", "--json")
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert json.loads(dry.stdout)["removed"] == out["removed"]
        assert out["bytes"] == 5000 + len('{"kind": "student", "artifact": ""}') + 64
        assert not dead.exists() and not (staging / f"{'a' * 64}.lock").exists()
        assert live.exists() and (staging / f"{'b' * 64}.lock").exists()
        requests = store.root / "requests"
        assert sorted(p.name for p in requests.iterdir()) == [f"{'e' * 64}.json"]
        # every lock file the six finished artifacts left behind is gone too
        assert sorted(p.name for p in staging.iterdir()) == sorted(
            [live.name, f"{'b' * 64}.lock"])
    finally:
        holder.kill()
        holder.wait()
    assert len(_ids(store)) == 5  # gc never touches objects/ (rm took the hard student)


def test_store_lock_survives_gc_unlinking_it(tmp_path: Path) -> None:
    """A producer waiting on a lock file that gc unlinks then locks the live file instead."""
    store = Store(tmp_path / "store")
    store.staging.mkdir(parents=True)
    lock = store.staging / f"{'c' * 64}.lock"
    lock.touch()
    seen: dict = {}

    def produce() -> None:
        with store._lock("c" * 64):
            seen["exists"] = lock.exists()
            with open(lock, "a") as other:
                try:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    seen["held"] = False
                except BlockingIOError:
                    seen["held"] = True

    with open(lock, "a") as gc_handle:  # gc holds the old file ...
        fcntl.flock(gc_handle, fcntl.LOCK_EX)
        worker = threading.Thread(target=produce)
        worker.start()
        time.sleep(0.5)  # ... the producer has opened it and waits ...
        os.unlink(lock)  # ... gc deletes it and lets go
        fcntl.flock(gc_handle, fcntl.LOCK_UN)
    worker.join(10)
    assert seen == {"exists": True, "held": True}
