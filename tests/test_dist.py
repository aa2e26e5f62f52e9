"""Distributed runs (issue 13): N gloo ranks on CPU equal one process, byte for byte.

Marked `dist` (multi-process, ~minutes in all): `pytest -m dist`, run by .ci/run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lpld_cli.models.factory import build_model, model_spec
from lpld_cli.squeeze import SqueezeConfig
from tests.conftest import needs_fmnist
from tests.dist_helpers import error_lines, payload, run_ranks, spawn, torchrun, wait_all

pytestmark = [pytest.mark.dist, needs_fmnist]

TINY = ["--width", "8", "--depth", "2", "--train-subset", "600"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed (random) ConvNet: squeeze --weights then runs only the statistics pass."""
    torch.manual_seed(1)
    model = build_model(model_spec("convnet", 10, 1, 28, 8, 2))
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _json(results) -> dict:
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    outs = [out for _, out, _ in results if out.strip()]
    assert len(outs) == 1, "only rank 0 prints the result"
    return json.loads(outs[0])


def test_squeeze_class_stats_byte_equal_for_1_and_2_ranks(tmp_path: Path, weights: Path
                                                           ) -> None:
    made = {}
    for n in (1, 2):
        store = tmp_path / f"s{n}"
        result = _json(run_ranks(n, ["squeeze", "--weights", str(weights), *TINY,
                                     "--store", str(store), "--json"]))
        made[n] = Path(result["artifact"]["path"])
        assert result["metrics"]["bn_images"] == 600
    assert made[1].name == made[2].name  # one id: the world size is not in it
    one, two = payload(made[1]), payload(made[2])
    assert set(one) >= {"bn_stats.safetensors", "weights.safetensors"}
    assert one == two


def test_ddp_teacher_names_its_world_size_and_caches(tmp_path: Path) -> None:
    """The documented launch (torch.distributed.run); the id records 2 ranks."""
    args = ["squeeze", *TINY, "--teacher-epochs", "1", "--batch-size", "64",
            "--store", str(tmp_path), "--json"]
    first = torchrun(2, args)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(first.stdout)
    config = SqueezeConfig(width=8, depth=2, train_subset=600, teacher_epochs=1,
                           batch_size=64, lr=result["config"]["lr"],
                           weight_decay=result["config"]["weight_decay"])
    from dataclasses import replace

    from lpld_cli.storage.store import Store
    assert result["artifact"]["id"] == Store.artifact_id(
        "teacher", replace(config, world_size=2).identity(), [])
    assert result["artifact"]["id"] != Store.artifact_id("teacher", config.identity(), [])
    assert result["metrics"]["top1"] > 0.3  # it learned (10 classes: chance is 0.1)
    again = torchrun(2, args)
    assert again.returncode == 0 and json.loads(again.stdout)["artifact"]["cached"]
    # A damaged payload is not a cache hit under torchrun either: every rank stops with
    # rank 0's finding, nothing is rebuilt over it.
    weights = tmp_path / "objects" / "teacher" / result["artifact"]["id"] / "weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    damaged = torchrun(2, args)
    assert damaged.returncode != 0
    assert "is corrupted: weights.safetensors" in damaged.stderr, damaged.stderr[-3000:]
    assert weights.read_bytes() == bytes(blob)


def test_store_not_shared_is_one_clear_error(tmp_path: Path, weights: Path) -> None:
    base = ["squeeze", "--weights", str(weights), *TINY]
    results = wait_all(spawn([base + ["--store", str(tmp_path / "a")],
                              base + ["--store", str(tmp_path / "b")]]))
    assert all(rc != 0 for rc, _, _ in results)
    lines = error_lines(results)
    assert len(lines) == 1 and "does not see the store" in lines[0], lines
    assert not list(tmp_path.glob("*/objects/teacher/*"))


def test_mismatched_configs_across_ranks_is_one_clear_error(tmp_path: Path, weights: Path
                                                            ) -> None:
    base = ["squeeze", "--weights", str(weights), *TINY, "--store", str(tmp_path)]
    results = wait_all(spawn([base, base + ["--seed", "1"]]))
    assert all(rc != 0 for rc, _, _ in results)
    lines = error_lines(results)
    assert len(lines) == 1 and "ranks disagree" in lines[0], lines
    assert not (tmp_path / "objects").exists() or not list(tmp_path.glob("objects/*/*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_gpu_is_one_line(tmp_path: Path) -> None:
    results = run_ranks(2, ["squeeze", "--device", "cuda", "--store", str(tmp_path)])
    assert all(rc != 0 for rc, _, _ in results)
    lines = error_lines(results)
    assert lines == ["Error: --device cuda: no CUDA GPU is available here"]
    assert not any("Traceback" in err for _, _, err in results)


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Path:
    """A store holding a teacher made from the fixed weights (one process)."""
    root = tmp_path_factory.mktemp("teacher")
    _json(run_ranks(1, ["squeeze", "--weights", str(weights), *TINY, "--store", str(root),
                        "--json"]))
    return root


def _copy_store(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src / "objects", dst / "objects")
    return dst


RECOVER = ["recover", "--ipc", "2", "--iterations", "20", "--classes-per-step", "2"]


def test_recover_png_bytes_equal_for_1_and_2_ranks(tmp_path: Path, teacher_store: Path
                                                   ) -> None:
    made = {}
    for n in (1, 2):
        store = _copy_store(teacher_store, tmp_path / f"s{n}")
        result = _json(run_ranks(n, [*RECOVER, "--store", str(store), "--json"]))
        made[n] = Path(result["artifact"]["path"])
        assert result["metrics"]["images"] == 20
    assert made[1].name == made[2].name
    one, two = payload(made[1]), payload(made[2])
    assert len([f for f in one if f.endswith(".png")]) == 20
    assert {f: hashlib.sha256(b).hexdigest() for f, b in one.items()} == {
        f: hashlib.sha256(b).hexdigest() for f, b in two.items()}


def test_killed_rank_stops_all_and_the_rerun_resumes_with_one_process(
        tmp_path: Path, teacher_store: Path) -> None:
    """SIGKILL rank 1 after the first class is saved: rank 0 exits non-zero (watchdog),
    no artifact appears; the same command on 1 process resumes and equals a clean run."""
    import signal
    import time

    args = ["recover", "--ipc", "2", "--iterations", "150", "--classes-per-step", "1"]
    store = _copy_store(teacher_store, tmp_path / "killed")
    procs = spawn([[*args, "--store", str(store)]] * 2, env={"LPLD_DIST_HEARTBEAT_S": "4"})
    deadline = time.monotonic() + 240
    while not list(store.glob("staging/*/train/0000*")) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.2)
    assert list(store.glob("staging/*/train/0000*")), "no class was saved in time"
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    results = wait_all(procs, timeout=120)
    assert time.monotonic() - killed_at < 60  # bounded: the heartbeat limit, not a hang
    assert all(rc != 0 for rc, _, _ in results)
    lines = error_lines(results)
    assert len(lines) <= 1 and all("rank 1" in line for line in lines), lines
    assert not list(store.glob("objects/images/*"))
    resumed = _json(run_ranks(1, [*args, "--store", str(store), "--json"]))
    assert resumed["metrics"]["classes_resumed"] >= 1
    clean_store = _copy_store(teacher_store, tmp_path / "clean")
    clean = _json(run_ranks(1, [*args, "--store", str(clean_store), "--json"]))
    assert payload(Path(resumed["artifact"]["path"])) == payload(
        Path(clean["artifact"]["path"]))


def test_one_process_commands_refuse_torchrun(tmp_path: Path) -> None:
    results = run_ranks(2, ["prune", "--ratio", "2x", "--store", str(tmp_path)])
    assert all(rc != 0 for rc, _, _ in results)
    assert error_lines(results) == ["Error: lpld prune runs as one process in this release"]
    assert not (tmp_path / "staging").exists()


@pytest.fixture(scope="module")
def images_store(tmp_path_factory: pytest.TempPathFactory, teacher_store: Path) -> Path:
    """A store holding the teacher and a tiny image set (20 images, one process)."""
    root = _copy_store(teacher_store, tmp_path_factory.mktemp("images"))
    _json(run_ranks(1, ["recover", "--ipc", "2", "--iterations", "5", "--store", str(root),
                        "--json"]))
    return root


def _arrays(folder: Path) -> dict:
    import zarr

    group = zarr.open_group(str(next(folder.rglob("labels.zarr"))), mode="r")
    return {name: group[name][...] for name in sorted(group.array_keys())}


# 20 images in batches of 19 (rows of 19 and 1 image: uneven slices, and a row smaller
# than 2 ranks for train) for 100 epochs: 200 rows in 100 shards, long enough that a run
# is still going when its first shards are written.
RELABEL = ["relabel", "--epochs", "100", "--batch-size", "19", "--rows-per-chunk", "2",
           "--rows-per-shard", "2"]
ROWS = 200


@pytest.fixture(scope="module")
def labels_store(tmp_path_factory: pytest.TempPathFactory, images_store: Path) -> Path:
    """The images relabelled by one process (the reference of the N-rank relabels)."""
    root = _copy_store(images_store, tmp_path_factory.mktemp("labels"))
    result = _json(run_ranks(1, [*RELABEL, "--store", str(root), "--json"]))
    assert result["metrics"]["rows"] == result["metrics"]["rows_labelled"] == ROWS
    return root


def test_relabel_arrays_equal_for_1_2_3_ranks(tmp_path: Path, images_store: Path,
                                              labels_store: Path) -> None:
    import numpy as np

    made = {1: next(labels_store.glob("objects/labels/*"))}
    for n in (2, 3):
        store = _copy_store(images_store, tmp_path / f"s{n}")
        result = _json(run_ranks(n, [*RELABEL, "--store", str(store), "--json"]))
        made[n] = Path(result["artifact"]["path"])
        assert result["metrics"]["rows"] == ROWS
        assert result["metrics"]["rows_labelled"] == ROWS  # every rank's rows, summed
    assert made[1].name == made[2].name == made[3].name  # one id for any world size
    reference = _arrays(made[1])
    assert reference["batch_id"].tolist() == list(range(ROWS))
    assert (reference["image_index"] >= 0).sum(1).tolist() == [19, 1] * (ROWS // 2)
    assert np.isfinite(reference["logits"].astype(np.float32)).all()
    for n in (2, 3):
        assert payload(made[n]) == payload(made[1]), n  # byte for byte, metadata included
        got = _arrays(made[n])
        assert set(got) == set(reference)
        assert all(np.array_equal(reference[k], got[k]) for k in reference), n


def test_only_rank_0_speaks(tmp_path: Path, images_store: Path) -> None:
    """Progress (a plain line per update without a terminal), messages and the summary
    come from rank 0; rank 1 prints nothing on either stream. The default layout (no
    --rows-per-*) gives the 40 rows 16 shards, so rank 1 has work of its own."""
    store = _copy_store(images_store, tmp_path / "quiet")
    (zero, one) = run_ranks(2, ["relabel", "--epochs", "20", "--batch-size", "19",
                                "--store", str(store)], env={"LPLD_PROGRESS_EVERY": "0"})
    assert zero[0] == one[0] == 0, zero[2][-2000:]
    assert (one[1], one[2]) == ("", "")
    assert "labels" in zero[1] and zero[1].count("\n") >= 1  # the human summary
    shares = re.findall(r"^relabel rows: \d+/(\d+)", zero[2], re.M)  # plain progress lines
    assert shares and 0 < int(shares[-1]) < 40  # rank 0 labels its shards; rank 1 the rest


def test_relabel_interrupted_on_2_ranks_resumes_on_1(tmp_path: Path, images_store: Path,
                                                     labels_store: Path) -> None:
    """Both ranks SIGKILLed once shards are written: nothing promoted; the same command on
    one process labels only the rest and equals an uninterrupted one-process run."""
    import signal
    import time

    store = _copy_store(images_store, tmp_path / "killed")
    procs = spawn([[*RELABEL, "--store", str(store)]] * 2)
    deadline = time.monotonic() + 120

    def done() -> set[int]:
        return {int(p.stem) for p in store.glob("staging/*/relabel-shards/*.done")}

    while not {0, 1} <= done():  # each rank has written a shard
        assert time.monotonic() < deadline, "no shard was written in time"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGSTOP)  # freeze both before either can finish
    for p in procs:
        p.send_signal(signal.SIGKILL)
    wait_all(procs)
    assert not list(store.glob("objects/labels/*"))
    written = done()
    assert len(written) < ROWS // 2  # most shards remain
    resumed = _json(run_ranks(1, [*RELABEL, "--store", str(store), "--json"]))
    assert resumed["metrics"]["rows"] == ROWS
    assert resumed["metrics"]["rows_labelled"] == ROWS - 2 * len(written)
    reference = next(labels_store.glob("objects/labels/*"))
    assert reference.name == resumed["artifact"]["id"]
    assert payload(Path(resumed["artifact"]["path"])) == payload(reference)


TRAIN = ["train", "--width", "8", "--depth", "2", "--epochs", "8", "--eval-every", "0"]


@pytest.fixture(scope="module")
def student_2(tmp_path_factory: pytest.TempPathFactory, labels_store: Path) -> dict:
    """A student trained on 2 ranks, interrupted and resumed: both ranks SIGKILLed once
    rank 0 has written an epoch checkpoint, then the same command on 2 ranks."""
    import signal
    import time

    store = _copy_store(labels_store, tmp_path_factory.mktemp("student2"))
    procs = spawn([[*TRAIN, "--store", str(store)]] * 2, env={"LPLD_CHECKPOINT_SECONDS": "0"})
    deadline = time.monotonic() + 120
    while not list(store.glob("staging/*/checkpoint.pt")):
        assert time.monotonic() < deadline, "no checkpoint was written in time"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGSTOP)  # freeze both before either can go on
    for p in procs:
        p.send_signal(signal.SIGKILL)
    wait_all(procs)
    promoted = list(store.glob("objects/student/*"))
    results = run_ranks(2, [*TRAIN, "--store", str(store), "--json"])
    return {"promoted_when_killed": promoted, "stderr": results[0][2], **_json(results)}


def test_sharded_evaluation_equals_one_process_count(student_2: dict) -> None:
    """The 2-rank student's top-1 (test batches dealt to the ranks, integer counts summed)
    equals a count by hand, in this process, of its saved weights on the whole test split."""
    from safetensors.torch import load_file

    from lpld_cli.data.datasets import load_dataset

    config = student_2["config"]
    model = build_model(model_spec(config["model"], 10, 1, 28, config["width"], config["depth"]))
    model.load_state_dict(load_file(str(Path(student_2["artifact"]["path"])
                                        / "weights.safetensors")))
    model.eval()
    data = load_dataset("fashion-mnist")
    x = data.test_images.float() / 255
    mean, std = data.preset.mean[0], data.preset.std[0]
    with torch.no_grad():
        hits = sum(int((model((x[i:i + 1000] - mean) / std).argmax(1)
                        == data.test_labels[i:i + 1000]).sum())
                   for i in range(0, len(x), 1000))
    assert len(x) == 10000
    assert student_2["metrics"]["top1"] == hits / len(x)


def _reference_student(root: Path, config: dict, n: int) -> dict[str, torch.Tensor]:
    """The independent oracle of DDP training on n ranks, in one process: every row's
    filled slots split into n contiguous slices (the first ones a slot larger), the student
    run on each slice (BatchNorm normalising with the slice's statistics; the running
    statistics kept are those of slice 0's forwards, as DDP keeps rank 0's), the per-slice
    KL sums added and divided by the row's size, one backward, one optimizer step.

    The recipe (initialisation, optimizer, learning-rate schedule, row order, replay) is
    the one-process trainer's; what this checks is the split of each row."""
    import torch.nn.functional as F

    from lpld_cli.data.augment import ImageBank, replay
    from lpld_cli.data.label_pool import LabelPool
    from lpld_cli.device import seed_everything
    from lpld_cli.storage.images import load_image_set
    from lpld_cli.storage.store import Store
    from lpld_cli.train import TrainConfig, _lr_at, _optimizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        store = Store(root)
        cfg = TrainConfig(**{k: v for k, v in config.items()
                             if k in TrainConfig.__dataclass_fields__})
        labels = next(a for a in store.list() if a.kind == "labels")
        pool = LabelPool.open(labels)
        pixels, _classes, _ = load_image_set(store.get(pool.images_id).path)
        data = json.loads(store.get(pool.teacher_id).file("data.json").read_text())
        bank = ImageBank(pixels, data["mean"], data["std"], torch.device("cpu"))
        seed_everything(cfg.seed)
        model = build_model(model_spec(cfg.model, 10, 1, 28, cfg.width, cfg.depth))
        optimizer = _optimizer(model, cfg)
        sampler = pool.sampler(cfg.seed)
        t = cfg.temperature
        model.train()
        for epoch in range(cfg.epochs):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(cfg, epoch)
            for i in sampler.epoch_rows(epoch):
                row, target = pool.get(int(i))
                logits = target.logits  # a float16 store: full logits
                valid = row.valid
                x = replay(bank, row, 28, pool.replay)  # the whole row, then sliced
                kept, terms = None, []
                for part in torch.tensor_split(torch.arange(valid), n):
                    if not len(part):
                        continue
                    out = model(x[part]).float()
                    kept = kept or {k: b.clone() for k, b in model.named_buffers()}
                    terms.append(F.kl_div(F.log_softmax(out / t, 1),
                                          F.log_softmax(logits[part] / t, 1),
                                          reduction="sum", log_target=True))
                optimizer.zero_grad(set_to_none=True)
                (sum(terms) / valid).backward()
                optimizer.step()
                with torch.no_grad():  # after the backward, which reads the buffers
                    for k, b in model.named_buffers():
                        b.copy_(kept[k])
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(threads)


def test_train_interrupted_on_2_ranks_resumes_from_rank_0s_checkpoint(student_2: dict
                                                                     ) -> None:
    assert student_2["promoted_when_killed"] == []  # nothing partial was promoted
    assert "resuming the student from epoch" in student_2["stderr"]
    assert not student_2["artifact"]["cached"]
    # the resumed student's numbers: test_train_on_2_ranks_equals_… (the same fixture)


def test_train_on_2_ranks_equals_a_one_process_row_split_reference(student_2: dict) -> None:
    """The student of 2 ranks (interrupted after an epoch and resumed) equals the oracle."""
    from safetensors.torch import load_file

    from lpld_cli.storage.store import Store

    result = student_2
    store = Path(result["artifact"]["path"]).parents[2]
    config = result["config"]
    assert config["world_size"] == 2 and config.get("sync_bn", False) is False
    one = {k: v for k, v in config.items() if k not in ("world_size", "sync_bn")}
    assert result["artifact"]["id"] == Store.artifact_id("student", config,
                                                         result["parents"])
    assert result["artifact"]["id"] != Store.artifact_id("student", one, result["parents"])
    got = load_file(str(Path(result["artifact"]["path"]) / "weights.safetensors"))
    want = _reference_student(store, config, 2)
    assert set(got) == set(want)
    # exact: the same kernels on the same slices, gradients scaled by powers of two
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, {k: float((got[k].double() - want[k].double()).abs().max())
                        for k in differ}
    # the reference is sensitive to the split: one slice (one process) is another student
    assert any(not torch.equal(got[k], v) for k, v in _reference_student(store, config, 1)
               .items() if k.endswith("weight"))

