"""Shared fixtures: a real (small, fast) teacher built by squeeze on real Fashion-MNIST."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lpld_cli.data.datasets import load_dataset
from lpld_cli.squeeze import SqueezeConfig, squeeze
from lpld_cli.storage.images import save_image_set
from lpld_cli.storage.store import Artifact, Store

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# A small real teacher: ConvNet width 16 on 4,000 training images, 2 epochs (~10 s).
TINY_TEACHER = SqueezeConfig(width=16, teacher_epochs=2, batch_size=64, lr=0.05,
                             train_subset=4000)

needs_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file() and not os.environ.get(
        "LPLD_DATA"), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(autouse=True, scope="session")
def _deterministic_cpu() -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)


@pytest.fixture(scope="session")
def teacher_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A store holding one tiny real teacher; copy it with `store_with_teacher`."""
    store = Store(tmp_path_factory.mktemp("teacher-store"))
    squeeze(store, TINY_TEACHER)
    return store


@pytest.fixture
def store_with_teacher(teacher_store: Store, tmp_path: Path) -> Store:
    """A fresh store (per test) that already holds the tiny teacher."""
    root = tmp_path / "store"
    shutil.copytree(teacher_store.root / "objects", root / "objects")
    return Store(root)


def make_real_images(store: Store, ipc: int = 3, seed: int = 0) -> Artifact:
    """An images artifact of real Fashion-MNIST images, child of the store's teacher."""
    teacher = store.newest("teacher")
    data = load_dataset("fashion-mnist")

    def build(staging) -> dict:
        x, y = data.sample_train_images(ipc, seed)
        save_image_set(staging.path, x, y, data.class_names)
        return {"images": len(y), "classes": data.num_classes}

    return store.produce("images", {"real": ipc, "seed": seed}, [teacher.id], build,
                         selectors={"dataset": "fashion-mnist", "ipc": ipc, "method": "real",
                                    "teacher": teacher.id})


def run_lpld(*args: str, store: Path | None = None, check: bool = False,
             timeout: float = 900, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run the real `lpld` command in a subprocess (end-to-end tests)."""
    cmd = [sys.executable, "-m", "lpld_cli", *args]
    if store is not None:
        cmd += ["--store", str(store)]
    full_env = {k: v for k, v in os.environ.items() if k != "LPLD_DEBUG"} | (env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc
