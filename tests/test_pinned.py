"""Behaviour pin: a tiny fixed pipeline's artifact ids and top-1 values, recorded before the
issue-12 refactor and required to stay equal through it.

Squeeze (1,000 images, 1 epoch) → recover (IPC 2, 5 iterations) → relabel (4 epochs of
CutMix batches of 10) → prune 2x → train (6 epochs), all on real Fashion-MNIST, ~2 s.
Ids are pure functions of the configs and parents; the top-1 values also pin the numerics
(one torch thread, global seed 0 before squeeze builds its network).

A change that is MEANT to change behaviour (a new replay contract, a deterministic squeeze,
a new config field) re-pins: run
    PYTHONPATH=$PWD python -m tests.test_pinned
paste the printed table over PINNED below, and say why in the commit message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tests.conftest import needs_fmnist

PINNED: dict[str, Any] = {
    "teacher": "6faa0a2f109394eed66328b8654d46ff95070c33547f9993ecd1dcd09c9f457b",
    "images": "a5519b01667c84c2bc0b6e4bb9af0b038738e05534e34e78df397bd0b6a6958b",
    "labels": "4699f4410b1b78a8baa0f4b0abaabd5bfce11d1c5b22ed22302edbcccb14f265",
    "pruned": "a762a57b097fc6b36ab5b16587531098b6d2116982ec77d64514c669fb63caa9",
    "student": "dc763353863a0de707a75388c80200932307fdef90d7d2483414844e150ed14b",
    "teacher_top1": 0.5801,
    "self_top1": 0.1,
    "student_top1": 0.1499,
}


def pipeline(root: Path) -> dict[str, Any]:
    """Run the tiny pipeline in a fresh store at `root`; return its ids and top-1 values."""
    from lpld_cli import (
        PruneConfig,
        RecoverConfig,
        RelabelConfig,
        SqueezeConfig,
        Store,
        TrainConfig,
        prune,
        recover,
        relabel,
        squeeze,
        train,
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        store = Store(root)
        teacher = squeeze(store, SqueezeConfig(width=8, depth=2, teacher_epochs=1, batch_size=64,
                                               lr=0.05, train_subset=1000))
        images = recover(store, RecoverConfig(ipc=2, iterations=5), teacher)
        labels = relabel(store, RelabelConfig(epochs=4, batch_size=10, mix="cutmix"), images)
        pruned = prune(store, PruneConfig(ratio=2.0), labels)
        student = train(store, TrainConfig(width=8, depth=2, epochs=6, batch_size=10, lr=3e-3),
                        images, pruned, None, eval_every=0)
    finally:
        torch.set_num_threads(threads)
    return {"teacher": teacher.id, "images": images.id, "labels": labels.id,
            "pruned": pruned.id, "student": student.id,
            "teacher_top1": teacher.metrics["top1"], "self_top1": images.metrics["self_top1"],
            "student_top1": student.metrics["top1"]}


@needs_fmnist
def test_pipeline_ids_and_top1_are_pinned(tmp_path: Path) -> None:
    got = pipeline(tmp_path / "store")
    changed = {k: (PINNED[k], got[k]) for k in PINNED if got[k] != PINNED[k]}
    assert not changed, (
        f"the pinned tiny pipeline changed (key: (pinned, now)): {changed}\n"
        "If this change is intended, re-pin: `PYTHONPATH=$PWD python -m tests.test_pinned`, "
        "paste its output over PINNED in tests/test_pinned.py and give the reason in the "
        "commit message. Otherwise a refactor changed behaviour.")


if __name__ == "__main__":
    import tempfile

    torch.use_deterministic_algorithms(True, warn_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(pipeline(Path(tmp) / "store"), indent=4))
