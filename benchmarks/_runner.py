"""The stage runner: one stage through lpld's Python API (cached in the artifact
store, so a rerun resumes), one phase of stages in a pool of spawned workers
(one torch thread each on CPU: small batches of 28 px images run fastest that way)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks._env import json_default, log


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_stage(task: dict[str, Any]) -> dict[str, Any]:
    """Run one stage (in a worker process) through lpld's Python API; return its result.

    task: {"stage": recover|relabel|prune|train, "store", "device", "config", and the
    parent ids: "teacher", "images", "labels"}.
    """
    import torch

    from lpld_cli.device import resolve_device
    from lpld_cli.storage.store import Store

    started = time.perf_counter()
    store = Store(task["store"])
    device = resolve_device(task["device"])
    stage, cfg = task["stage"], task["config"]
    if stage == "recover":
        from lpld_cli.recover import RecoverConfig, recover

        art = recover(store, RecoverConfig(**cfg), store.get(task["teacher"], kind="teacher"),
                      data_root=task.get("data"), device=device)
    elif stage == "relabel":
        from lpld_cli.relabel import RelabelConfig, relabel

        art = relabel(store, RelabelConfig(**cfg), store.get(task["images"], kind="images"),
                      device=device)
    elif stage == "prune":
        from lpld_cli.prune import PruneConfig, prune

        art = prune(store, PruneConfig(**cfg), store.get(task["labels"], kind="labels"),
                    tail_at=task.get("tail_at"))
    elif stage == "train":
        from lpld_cli.train import TrainConfig, train

        # A finished student is found without loading the dataset (train() loads it first).
        parents = [task["images"], *(task[k] for k in ("labels", "teacher") if task.get(k))]
        hit = store.cached("student", TrainConfig(**cfg).identity(), parents)
        if hit is not None:
            return {"id": hit.id, "cached": True, "metrics": hit.metrics,
                    "seconds": round(time.perf_counter() - started, 2)}
        labels = store.get(task["labels"], kind="labels") if task.get("labels") else None
        teacher = store.get(task["teacher"], kind="teacher") if task.get("teacher") else None
        art = train(store, TrainConfig(**cfg), store.get(task["images"], kind="images"),
                    labels, teacher, data_root=task.get("data"), device=device, eval_every=0)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    del torch
    return {"id": art.id, "cached": art.cached, "metrics": art.metrics,
            "seconds": round(time.perf_counter() - started, 2)}


class Runner:
    """Runs the tasks of one phase (a dict key → task) and logs one line per finished task."""

    def __init__(self, store: Path, device: str, jobs: int, threads: int,
                 data: str | None = None) -> None:
        self.store, self.device, self.jobs, self.threads = str(store), device, jobs, threads
        self.data = data
        self.results: dict[Any, dict[str, Any]] = {}
        self.done = 0
        self.total = 0

    def phase(self, name: str, tasks: dict[Any, dict[str, Any]],
              describe: Callable[[Any, dict[str, Any]], str] | None = None) -> None:
        todo = {k: {**t, "store": self.store, "device": self.device, "data": self.data}
                for k, t in tasks.items() if k not in self.results}
        if not todo:
            return
        log(f"phase {name}: {len(todo)} runs on {self.jobs} worker(s)")
        started = time.perf_counter()
        count = 0

        def report(key: Any, result: dict[str, Any]) -> None:
            nonlocal count
            count += 1
            self.results[key] = result
            text = describe(key, result) if describe else ""
            state = "cached" if result["cached"] else f"{result['seconds']:.1f}s"
            log(f"  {name} [{count}/{len(todo)}] {_key_text(key)}: {text} ({state}; "
                f"phase {time.perf_counter() - started:.0f}s)")

        if self.jobs <= 1:
            _init_worker(self.threads)
            for key, task in todo.items():
                report(key, run_stage(task))
            return
        with ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(self.threads,)) as pool, \
                _sigterm_unwinds():
            futures = {pool.submit(run_stage, task): key for key, task in todo.items()}
            try:
                for future in as_completed(futures):
                    report(futures[future], future.result())
            except BaseException:
                _stop(pool)
                raise


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (`kill`, a scheduler's preemption) unwinds like Ctrl-C, so the pool's
    workers are stopped rather than left running their stage without a parent."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the stages not started and end the running ones now: the store keeps only
    finished artifacts, so a rerun resumes (shutdown alone waits for every running stage)."""
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in workers:
        proc.terminate()


def _key_text(key: Any) -> str:
    if isinstance(key, tuple):
        return " ".join(str(k) for k in key if k is not None)
    return str(key)


if __name__ == "__main__":  # one stage from a JSON task: `python -m benchmarks._runner TASK`
    _task = json.loads(sys.argv[1])
    _init_worker(int(_task.get("threads", 1)))
    print(json.dumps(run_stage(_task), default=json_default))
