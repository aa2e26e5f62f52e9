"""`lpld squeeze` and `lpld verify` through the real command: results, caching, errors, kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lpld_cli.errors import ArtifactCorruptedError
from lpld_cli.models.teacher import load_teacher
from lpld_cli.storage.store import Store
from tests.conftest import needs_fmnist, run_lpld

TINY = ["--width", "16", "--teacher-epochs", "1", "--train-subset", "2000", "--batch-size", "64"]


def _assert_clean_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, proc.stderr
    assert text in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@needs_fmnist
def test_squeeze_json_and_cache(tmp_path: Path) -> None:
    proc = run_lpld("squeeze", *TINY, "--json", store=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["command"] == "squeeze" and result["artifact"]["kind"] == "teacher"
    assert result["artifact"]["cached"] is False and result["parents"] == []
    assert 0.5 < result["metrics"]["top1"] <= 1 and result["metrics"]["top5"] >= result[
        "metrics"]["top1"]
    assert result["metrics"]["images_seen"] == 2000
    assert result["config"]["width"] == 16 and result["config"]["bn_stats"] == "exact"
    # The payload: weights, class-wise and global statistics, spec.
    teacher = load_teacher(Store(tmp_path).get(result["artifact"]["id"]))
    assert teacher.class_stats is not None and len(teacher.class_stats) == 3
    stats = load_file(str(Path(result["artifact"]["path"]) / "bn_stats.safetensors"))
    assert stats["features.1.mean"].shape == (10, 16) and stats["features.1.count"].sum() == 2000
    assert stats["features.1.global_mean"].shape == (16,)

    start = time.perf_counter()
    again = run_lpld("squeeze", *TINY, "--json", store=tmp_path)
    assert time.perf_counter() - start < 5
    cached = json.loads(again.stdout)
    assert cached["artifact"]["id"] == result["artifact"]["id"]
    assert cached["artifact"]["cached"] is True


@needs_fmnist
def test_squeeze_with_given_weights_and_ema(tmp_path: Path, teacher_store: Store) -> None:
    source = teacher_store.newest("teacher")
    weights = source.file("weights.safetensors")
    proc = run_lpld("squeeze", "--width", "16", "--weights", str(weights), "--bn-stats", "ema",
                    "--train-subset", "1000", "--json", store=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["metrics"]["images_seen"] == 0  # no training
    assert result["metrics"]["top1"] == pytest.approx(source.metrics["top1"], abs=1e-9)
    assert result["config"]["weights_sha256"] is not None


def test_verify_and_parent_read_detect_a_flipped_byte(store_with_teacher: Store) -> None:
    store = store_with_teacher
    teacher = store.newest("teacher")
    ok = run_lpld("verify", store=store.root)
    assert ok.returncode == 0, ok.stderr
    target = teacher.file("bn_stats.safetensors")
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    bad = run_lpld("verify", store=store.root)
    assert bad.returncode == 1
    assert f"Error: artifact {teacher.id} is corrupted: bn_stats.safetensors" in bad.stderr
    assert "Traceback" not in bad.stderr
    one = run_lpld("verify", teacher.id[:10], store=store.root)
    assert one.returncode == 1 and "bn_stats.safetensors" in one.stderr
    with pytest.raises(ArtifactCorruptedError, match="bn_stats.safetensors"):
        store.get(teacher.id, kind="teacher")
    for args in (["recover", "--from", teacher.id[:12]], ["recover", "--ipc", "2"]):
        as_parent = run_lpld(*args, store=store.root)
        assert as_parent.returncode == 1, as_parent.stderr
        assert f"artifact {teacher.id} is corrupted: bn_stats.safetensors" in as_parent.stderr
    assert not list(store.root.glob("objects/images/*"))


@needs_fmnist
def test_sigkill_mid_run_leaves_no_artifact(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "lpld_cli", "squeeze", "--width", "16", "--teacher-epochs",
            "3", "--train-subset", "20000", "--store", str(tmp_path)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    staging = tmp_path / "staging"
    while time.time() < deadline and not any(p.is_dir() for p in staging.glob("*")):
        time.sleep(0.2)
    time.sleep(1.5)
    assert proc.poll() is None, "squeeze finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(tmp_path.glob("objects/*/*"))
    assert any(p.is_dir() for p in staging.glob("*"))  # the leftover the next run cleans
    again = run_lpld("squeeze", *TINY, "--json", store=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(list((tmp_path / "objects" / "teacher").iterdir())) == 1


BAD_INPUTS = [
    (["--dataset", "cifar-7"], "unknown dataset 'cifar-7'"),
    (["--data", "/nonexistent/folder"], "data folder /nonexistent/folder does not exist"),
    (["--device", "cuda"], "no CUDA GPU is available"),
    (["--teacher-epochs", "0"], "--teacher-epochs must be at least 1"),
    (["--model", "alexnet9"], "unknown model 'alexnet9'"),
    (["--weights", "/nonexistent.safetensors"],
     "--weights /nonexistent.safetensors does not exist"),
]


@pytest.mark.parametrize(("args", "text"), BAD_INPUTS, ids=[a[0] for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clean_line(tmp_path: Path, args: list[str], text: str) -> None:
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = run_lpld("squeeze", *args, store=tmp_path / "store")
    _assert_clean_error(proc, text)
    assert not (tmp_path / "store" / "objects").exists()


def test_not_idx_file(tmp_path: Path) -> None:
    folder = tmp_path / "fake"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"this is not an IDX file at all")
    proc = run_lpld("squeeze", "--data", str(folder), store=tmp_path / "store")
    _assert_clean_error(proc, "is not an IDX file")
    assert not (tmp_path / "store" / "objects").exists()


@needs_fmnist
def test_weights_not_matching_the_model(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.safetensors"
    save_file({"features.0.weight": torch.zeros(3, 3)}, str(wrong))
    proc = run_lpld("squeeze", "--weights", str(wrong), store=tmp_path / "store")
    _assert_clean_error(proc, "does not match the model")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00garbage")
    proc = run_lpld("squeeze", "--weights", str(garbage), store=tmp_path / "store")
    _assert_clean_error(proc, "is not a readable state dict")
    assert not (tmp_path / "store" / "objects").exists()


def test_debug_shows_traceback(tmp_path: Path) -> None:
    proc = run_lpld("squeeze", "--dataset", "cifar-7", store=tmp_path, env={"LPLD_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr
